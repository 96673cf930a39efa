"""The README's config reference is generated from the dataclasses and must be current."""
from pathlib import Path

from resdepth.config.reference import END, START, main, reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_is_current():
    assert main(["--check", str(README)]) == 0, "run `make config-reference`"


def test_reference_lists_every_section_and_eval_flags():
    text = reference_markdown()
    assert text.startswith(START) and text.endswith(END)
    for key in ("`data.root`", "`trainer.max_steps`", "`model.regression_ckpt`", "`run.dir`",
                "`diffusion.P_mean`", "`ensemble`"):
        assert key in text, key
