"""The config reference in docs/configuration.md is generated from the dataclasses and must be current."""
from pathlib import Path

from resdepth.reference import DEFAULT_PAGE, END, START, main, reference_markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_reference_is_current():
    assert main(["--check", str(PAGE)]) == 0, "run `make config-reference`"


def test_default_page_is_the_docs_page_and_check_sees_a_stale_block(tmp_path, capsys):
    assert DEFAULT_PAGE == PAGE
    assert main(["--check"]) == 0  # no file named: the docs page
    stale = tmp_path / "page.md"
    stale.write_text(PAGE.read_text().replace("`trainer.max_steps`", "`trainer.max_stepz`"))
    assert main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--write", str(stale)]) == 0
    assert stale.read_text() == PAGE.read_text()


def test_reference_lists_every_section_and_eval_flags():
    text = reference_markdown()
    assert text.startswith(START) and text.endswith(END)
    for key in ("`data.root`", "`trainer.max_steps`", "`model.regression_ckpt`", "`run.dir`",
                "`diffusion.P_mean`", "`ensemble`"):
        assert key in text, key
