"""The activity groups of evaluation: which windows are low-activity, and that the groups' sums
add up to the split's."""
from __future__ import annotations

import json

import pytest

from resdepth.eval.scoring import LOW_ACTIVITY_EPP, activity_group


@pytest.mark.parametrize("events, valid, group", [
    (0, 100, "low_activity"), (24, 100, "low_activity"), (25, 100, "active"),
    (1000, 100, "active"), (None, 100, None), (5, 0, None)])
def test_activity_group_by_events_per_valid_pixel(events, valid, group):
    assert LOW_ACTIVITY_EPP == 0.25
    assert activity_group(events, valid) == group


def test_groups_add_up_to_the_split(tmp_path):
    """A synthetic trajectory split with stops: both groups present, their pixels and samples
    add up to the split's, and a group's metrics are those of its own windows."""
    import subprocess
    import sys

    from tests.eval.runner import make_exports, run_eval, eval_args

    subprocess.run([sys.executable, "-m", "resdepth.data.cli", "synth", "--out", str(tmp_path / "s"),
                    "--train", "0", "--val", "0", "--test", "24", "--height", "32", "--width", "32",
                    "--bins", "3", "--sequence-length", "8", "--per-shard", "8"], check=True,
                   capture_output=True)
    exports = make_exports(tmp_path / "nets", size=(32, 32), bins=3)
    out = tmp_path / "ev"
    run_eval(eval_args(exports, tmp_path / "s" / "test", out, "--baseline", "none"))
    m = json.loads((out / "metrics.json").read_text())
    g = m["groups"]
    assert set(g) == {"low_activity", "active"}
    assert g["low_activity"]["num_samples"] + g["active"]["num_samples"] == 24
    for name in ("regression", "diffusion"):
        assert (g["low_activity"][name]["num_valid_pixels"] + g["active"][name]["num_valid_pixels"]
                == m[name]["num_valid_pixels"])
    assert g["low_activity"]["regression"]["abs_rel"] != g["active"]["regression"]["abs_rel"]
    assert "## Group low_activity" in (out / "report.md").read_text()
