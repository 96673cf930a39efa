"""``status``'s per-run node column from Slurm's records (no Slurm needed: the records are given)."""
from resdepth.launch.status import describe_runs

HIST = [dict(state="NODE_FAIL", start="2026-01-01T12:00:00", end="2026-01-01T12:00:30", nodes="n[1-2]"),
        dict(state="COMPLETED", start="2026-01-01T12:00:50", end="2026-01-01T12:01:30", nodes="n[1,3]")]
EVENTS = [dict(node="n2", start="2026-01-01T12:00:20", reason="Not responding"),
          dict(node="n3", start="2026-01-01T11:00:00", reason="Not responding"),  # before the job
          dict(node="n2", start="2026-01-01T12:05:00", reason="Not responding")]  # after it


def test_each_run_lists_its_nodes_and_the_node_that_went_down_under_it():
    assert describe_runs(HIST, EVENTS) == ["n[1-2] NODE_FAIL: n2 down 12:00:20 (Not responding)",
                                           "n[1,3] COMPLETED"]


def test_a_run_that_never_got_nodes_is_left_out():
    pending = dict(state="PENDING", start="Unknown", end="Unknown", nodes="None assigned")
    assert describe_runs([pending], EVENTS) == []
