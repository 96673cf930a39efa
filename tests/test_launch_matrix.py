"""The launch matrix: both backends under every launcher train a few steps and export, each
within a time limit; a world of one ends with the same parameters whatever started it, and so
does a world of two; evaluation under torchrun 1 and 2 gives the same metrics.

Cells with several processes are marked ``dist``; cells on the local Slurm are marked ``slurm``
and skip when it does not answer. One tiny shard set and one tiny net serve the whole session,
and every cell runs once however many tests read it. ``-s`` prints each cell's exit status and
seconds.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.eval.runner import assert_metrics_close, metrics
from tests.procs import child_env
from tests.shards import write_synth_splits
from tests.train.runner import TINY, checksums

BACKENDS = ("ddp", "deepspeed")
# launcher -> (world size, marks)
LAUNCHERS = {
    "python": (1, ()),
    "torchrun-1": (1, ("dist",)),
    "torchrun-2": (2, ("dist",)),
    "srun-1": (1, ("slurm",)),
    "srun-2": (2, ("slurm", "dist")),
    "submitit-local": (1, ()),
}
CELL_LIMIT_S = 240  # a cell that hangs (the 30-minute rendezvous of old) fails here instead
STEPS = ["trainer.max_steps=4", "trainer.batch_size=4", "trainer.ckpt_every_steps=0"]


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split())


def marks(launcher: str) -> list:
    out = [getattr(pytest.mark, m) for m in LAUNCHERS[launcher][1]]
    if "slurm" in LAUNCHERS[launcher][1]:
        out.append(pytest.mark.skipif(not slurm_up(), reason="no local Slurm (launch/local_slurm.sh start)"))
    return out


def cells(launchers=tuple(LAUNCHERS)) -> list:
    return [pytest.param(b, l, id=f"{b}-{l}", marks=marks(l)) for b in BACKENDS for l in launchers]


@dataclass
class Cell:
    returncode: int
    seconds: float
    run: Path
    output: str


class Matrix:
    """Runs each (backend, launcher) cell once per session and keeps what it left."""

    def __init__(self, shards: Path, root: Path) -> None:
        self.shards, self.root = shards, root
        self.done: dict[tuple[str, str], Cell] = {}

    def args(self, backend: str, run: Path) -> list[str]:
        return ["experiment=baseline_regression", f"data.root={self.shards}", f"run.dir={run}",
                f"trainer.backend={backend}", *TINY, *STEPS]

    def command(self, launcher: str, backend: str, run: Path) -> list[str]:
        train = ["-m", "resdepth.train", *self.args(backend, run)]
        n = LAUNCHERS[launcher][0]
        if launcher == "python":
            return [sys.executable, *train]
        if launcher.startswith("torchrun"):
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={n}", *train]
        if launcher.startswith("srun"):
            return ["srun", f"--ntasks={n}", "--time=5", "--kill-on-bad-exit=1",
                    "--job-name=launch-matrix", sys.executable, *train]
        # resdepth-launch on submitit's LocalExecutor: one task, as a user would submit it
        return [sys.executable, "-m", "resdepth.launch", "train", "--cluster", "local", "--profile", "local",
                "--time", "5", "--max-requeue", "0", "--wait", "--run-dir", str(run),
                *self.args(backend, run)]

    def run(self, backend: str, launcher: str) -> Cell:
        key = (backend, launcher)
        if key not in self.done:
            run = self.root / f"{backend}-{launcher}"
            t0 = time.monotonic()
            try:
                proc = subprocess.run(self.command(launcher, backend, run), env=child_env(),
                                      capture_output=True, text=True, timeout=CELL_LIMIT_S)
                code, out = proc.returncode, proc.stdout[-3000:] + proc.stderr[-5000:]
            except subprocess.TimeoutExpired as e:
                code, out = -9, f"killed after {CELL_LIMIT_S} s\n{e.stdout or ''}{e.stderr or ''}"
            self.done[key] = Cell(code, time.monotonic() - t0, run, out)
            print(f"\ncell {backend:9s} {launcher:15s} exit {code} in {self.done[key].seconds:.1f} s")
        return self.done[key]

    def finished(self, backend: str, launcher: str) -> Cell:
        cell = self.run(backend, launcher)
        assert cell.returncode == 0, f"{backend} under {launcher}: exit {cell.returncode}\n{cell.output}"
        return cell


@pytest.fixture(scope="session")
def matrix_shards(tmp_path_factory) -> Path:
    """32 train samples in 4 shards (2 per rank of a world of two), 8 val, 8 test; 16x16, 3 bins."""
    return write_synth_splits(tmp_path_factory.mktemp("matrix_shards"),
                              {"train": 32, "val": 8, "test": 8}, seed=5, per_shard=8)


@pytest.fixture(scope="session")
def matrix(matrix_shards, tmp_path_factory) -> Matrix:
    return Matrix(matrix_shards, tmp_path_factory.mktemp("matrix"))


@pytest.mark.parametrize("backend, launcher", cells())
def test_cell_trains_and_exports(matrix, backend, launcher):
    cell = matrix.finished(backend, launcher)
    world = LAUNCHERS[launcher][0]
    assert (cell.run / "export" / "model.safetensors").exists()
    sums = checksums(cell.run)
    assert len(sums) == world and len(set(sums)) == 1, sums
    joined = (cell.run / "log-rank0.txt").read_text()
    if world == 1 and backend == "deepspeed":
        assert "gloo group on a process-local store" in joined
    if world == 2:
        assert "rank 0/2 joined gloo group" in joined


def _same_parameters(matrix: Matrix, backend: str, launchers: list[str]) -> None:
    if any("slurm" in LAUNCHERS[l][1] for l in launchers) and not slurm_up():
        launchers = [l for l in launchers if "slurm" not in LAUNCHERS[l][1]]
    sums = {l: checksums(matrix.finished(backend, l).run)[0] for l in launchers}
    assert len(set(sums.values())) == 1, sums


@pytest.mark.dist
@pytest.mark.parametrize("backend", BACKENDS)
def test_world_of_one_ends_alike_whatever_the_launcher(matrix, backend):
    _same_parameters(matrix, backend, [l for l, (n, _) in LAUNCHERS.items() if n == 1])


@pytest.mark.dist
@pytest.mark.parametrize("backend", BACKENDS)
def test_world_of_two_ends_alike_whatever_the_launcher(matrix, backend):
    _same_parameters(matrix, backend, [l for l, (n, _) in LAUNCHERS.items() if n == 2])


@pytest.mark.dist
def test_evaluation_under_torchrun_one_and_two(matrix, tmp_path):
    export = matrix.finished("ddp", "python").run
    found = {}
    for n in (1, 2):
        out = tmp_path / f"eval-{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "resdepth.eval", "--regression", str(export), "--data",
               str(matrix.shards / "test"), "--out", str(out), "--device", "cpu", "--unit-size", "2",
               "--preview", "2"]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True,
                              timeout=CELL_LIMIT_S)
        print(f"\ncell eval      torchrun-{n}      exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
        assert proc.returncode == 0, proc.stderr[-5000:]
        found[n] = metrics(out)
    assert found[1]["num_samples"] == found[2]["num_samples"] == 8
    assert_metrics_close(found[1], found[2], rel=1e-12)


def test_missing_peer_stops_the_trainer_with_one_line(matrix_shards, tmp_path):
    """A world of two whose second rank never starts: the trainer ends within the configured
    rendezvous timeout with the named error and no traceback."""
    from tests.procs import free_port

    port = free_port()
    env = child_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port), RESDEPTH_RENDEZVOUS_TIMEOUT="3")
    run = tmp_path / "alone"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "resdepth.train", "experiment=baseline_regression",
                           f"data.root={matrix_shards}", f"run.dir={run}", *TINY, *STEPS],
                          env=env, capture_output=True, text=True, timeout=CELL_LIMIT_S)
    print(f"\nalone rank 0 of 2: exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = [l for l in proc.stderr.splitlines() if l.startswith("resdepth-train: error:")]
    assert line and f"rank 0 of world size 2 could not join the gloo process group at 127.0.0.1:{port}" \
        in line[0] and "within 3 s" in line[0], proc.stderr[-3000:]
