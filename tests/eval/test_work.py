"""The work list: fixed units, every sample exactly once for any world size, Slurm array indices."""
import pytest

from resdepth.config.core import ConfigError
from resdepth.eval.config import EvalConfig
from resdepth.infer.config import resolve_tasks
from resdepth.infer.work import make_units, task_units, worker_units

SHARDS = [(f"/d/shard-{i:06d}.tar", n) for i, n in enumerate([5, 3, 8, 1, 6, 2, 4])]


def covered(units) -> list[tuple[str, int]]:
    return [(u.url, i) for u in units for i in range(u.start, u.stop)]


def test_units_cover_every_sample_once_in_order():
    units = make_units(SHARDS, unit_size=3)
    assert covered(units) == [(url, i) for url, n in SHARDS for i in range(n)]
    assert [u.offset for u in units] == [0, 3, 5, 8, 11, 14, 16, 17, 20, 23, 25, 28]
    assert len({u.name for u in units}) == len(units)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 13, 20])
@pytest.mark.parametrize("tasks", [1, 3])
def test_split_without_padding(world, tasks):
    units = make_units(SHARDS, unit_size=3)
    got = [u for t in range(tasks) for r in range(world) for u in worker_units(units, tasks, t, world, r)]
    assert sorted(got, key=lambda u: u.offset) == units  # each unit once, none repeated or padded
    per_task = [task_units(units, tasks, t, world) for t in range(tasks)]
    assert sum(len(p) for p in per_task) == len(units)


def test_max_samples_cuts_the_list_and_needs_counts():
    units = make_units(SHARDS, unit_size=3, max_samples=10)
    assert sum(u.count for u in units) == 10
    assert covered(units) == covered(make_units(SHARDS, 3))[:10]
    with pytest.raises(ValueError, match="index.json"):
        make_units([("a.tar", None)], 3, max_samples=4)


def test_slurm_array_variables():
    cfg = EvalConfig()
    assert resolve_tasks(cfg, {}) == (1, 0)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_tasks(cfg, env) == (4, 2)
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "4",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    assert resolve_tasks(cfg, env) == (3, 2)
    assert resolve_tasks(EvalConfig(num_tasks=3, task_id=1), env) == (3, 1)  # flags win
    with pytest.raises(ConfigError, match="task_id=3"):
        resolve_tasks(EvalConfig(num_tasks=3, task_id=3), {})
