"""Jobs across the nodes of the local multi-node Slurm (``launch/local_slurm.sh start --nodes 3``):
hosts and interfaces, a lost peer, node failure and requeue, the same numbers on one node and on
two, an evaluation array over three nodes, the pipeline.

Each node is a network, UTS and mount namespace with its own hostname (n1, n2, n3) and address on
a private bridge; ``kill-node`` takes a node's link down and kills every process in it. In CI
(``CI=true``) a cluster that is not up fails these tests; elsewhere they skip. ``-s`` prints each
cell's exit status, time and comparison.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resdepth.launch import records, status, submit
from resdepth.launch.cluster import Resources, load_profile
from tests.launch.test_slurm import sacct_states, wait_final, wait_for
from tests.shards import write_synth_splits

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "local_slurm.sh"
NODES = ("n1", "n2", "n3")
TINY = ["model.model_channels=8", "model.channel_mult=[1,2]", "model.num_blocks=1",
        "model.attn_resolutions=[]", "trainer.batch_size=4", "trainer.warmup_steps=2",
        "trainer.ema_halflife_images=40", "data.num_workers=0", "data.shuffle_buffer=16",
        "run.val_every=0", "run.log_every=1", "trainer.ckpt_every_minutes=0",
        "trainer.precision=fp32"]
# run.log_every=1: a stats.jsonl line averages the steps since the previous one, so a resume
# between two lines would change the first line after it; one step per line compares exactly.
pytestmark = pytest.mark.slurm
LONG = 40  # steps of the interrupted runs and their references; checkpoints every 5
COLLECTIVE_TIMEOUT_S = 20  # the tests' collective timeout: a lost peer ends the job this fast


def cluster_nodes() -> list[str]:
    if shutil.which("sinfo") is None:
        return []
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if out.returncode == 0]


@pytest.fixture(scope="module")
def cluster():
    """The three-node cluster; fails in CI when it is not up, skips elsewhere."""
    nodes = cluster_nodes()
    if not set(NODES) <= set(nodes):
        msg = (f"no local three-node Slurm (bash launch/local_slurm.sh start --nodes 3); "
               f"sinfo lists {nodes or 'nothing'}")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    yield nodes
    revive_all()


def node_states() -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=True)
    return dict(line.split() for line in out.stdout.splitlines())


def revive_all() -> None:
    for node, state in node_states().items():
        if state.startswith(("down", "drain", "fail")) or state.endswith("*"):
            subprocess.run(["bash", str(SCRIPT), "revive-node", node], check=True, capture_output=True)


@pytest.fixture(autouse=True)
def healthy_nodes(cluster):
    """Every test starts with every node idle or mixed (a killed node is revived)."""
    revive_all()
    yield


@pytest.fixture(scope="module")
def mn_shards(tmp_path_factory) -> Path:
    """32 train samples in 4 shards, 8 val, 8 test; tiny images."""
    return write_synth_splits(tmp_path_factory.mktemp("mn_shards"), {"train": 32, "val": 8, "test": 8},
                              seed=11, per_shard=8)


@pytest.fixture(autouse=True)
def job_env(monkeypatch):
    # sbatch hands the submitting environment to the job: CPU DeepSpeed, one thread per rank.
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def resources(nodes: int, tasks: int, **kw) -> Resources:
    return Resources.from_profile(load_profile("local"), nodes=nodes, tasks_per_node=tasks, time_min=15,
                                  collective_timeout_s=COLLECTIVE_TIMEOUT_S, **kw)


def train_args(shards: Path, backend: str, steps: int, *more: str) -> list[str]:
    zero = ["trainer.zero_stage=2"] if backend == "deepspeed" else []  # optimizer state and gradients sharded
    return ["experiment=baseline_regression", f"data.root={shards}", f"trainer.backend={backend}",
            f"trainer.max_steps={steps}", *zero, *TINY, *more]


def submit_train(run: Path, shards: Path, backend: str, nodes: int, tasks: int, steps: int = 12,
                 ckpt_every: int = 0, **kw):
    more = [f"trainer.ckpt_every_steps={ckpt_every}"]
    cfg = submit.train_config(train_args(shards, backend, steps, *more), str(run))
    return submit.submit_train(cfg, resources(nodes, tasks, **kw), "slurm", max_requeue=3)


def export_bytes(run: Path) -> bytes:
    return (run / "export" / "model.safetensors").read_bytes()


def loss_lines(run: Path) -> list[dict]:
    """The loss entries of ``stats.jsonl`` (times and throughput differ between runs)."""
    out = []
    for line in (run / "stats.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k == "step" or "loss" in k})
    return out


def job_nodes(job_id: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True)
    text = out.stdout.strip()
    return subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True,
                          check=True).stdout.split() if text else []


def job_running(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() == "RUNNING"


def kill_node(node: str) -> float:
    subprocess.run(["bash", str(SCRIPT), "kill-node", node], check=True, capture_output=True)
    return time.monotonic()


def rank_logs(run: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(run.glob("log-rank*.txt")))


def report(cell: str, code: str, seconds: float, identical: object = "") -> None:
    print(f"\ncell {cell:42s} {code:10s} {seconds:6.1f} s {identical}", flush=True)


class Runs:
    """Uninterrupted training runs, each submitted once per module and shared by the tests."""

    def __init__(self, shards: Path, root: Path) -> None:
        self.shards, self.root = shards, root
        self.subs: dict[tuple, object] = {}
        self.times: dict[tuple, float] = {}

    def start(self, backend: str, nodes: int, tasks: int, steps: int = 12) -> None:
        key = (backend, nodes, tasks, steps)
        if key not in self.subs:
            self.times[key] = time.monotonic()
            self.subs[key] = submit_train(self.dir(*key), self.shards, backend, nodes, tasks, steps)

    def dir(self, backend: str, nodes: int, tasks: int, steps: int = 12) -> Path:
        return self.root / f"{backend}-{nodes}x{tasks}-{steps}"

    def done(self, backend: str, nodes: int, tasks: int, steps: int = 12) -> Path:
        """The run directory once the job COMPLETED."""
        key = (backend, nodes, tasks, steps)
        self.start(*key)
        jid = self.subs[key].job_ids[0]
        state = wait_final(jid, 900)
        if key in self.times:
            report(f"{backend} {nodes}x{tasks} {steps} steps uninterrupted", state,
                   time.monotonic() - self.times.pop(key))
        assert state == "COMPLETED", (state, rank_logs(self.dir(*key))[-3000:])
        return self.dir(*key)


@pytest.fixture(scope="module")
def runs(mn_shards, tmp_path_factory) -> Runs:
    return Runs(mn_shards, tmp_path_factory.mktemp("mn_runs"))


LAYOUTS = {"2x1": ((2, 1), (1, 2)), "2x2": ((2, 2), (1, 4))}  # across nodes vs one node


def start_all(runs: Runs) -> None:
    """Every uninterrupted run of the module at once (the cluster queues what does not fit)."""
    for backend in ("ddp", "deepspeed"):
        for (n, t), (n1, t1) in LAYOUTS.values():
            runs.start(backend, n, t)
            runs.start(backend, n1, t1)
        runs.start(backend, 2, 1, LONG)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_across_nodes_equals_one_node(runs, backend, layout):
    """2 nodes x 1 or 2 tasks: every rank logs its host, the master comes from the node list, and
    the export and loss lines equal the same world size on one node bit for bit."""
    start_all(runs)
    (n, t), (n1, t1) = LAYOUTS[layout]
    world = n * t
    across, one = runs.done(backend, n, t), runs.done(backend, n1, t1)
    logs = rank_logs(across)
    hosts = {int(m[0]): m[1] for m in re.findall(rf"rank (\d)/{world} joined .* on host (n\d)", logs)}
    assert sorted(hosts) == list(range(world)), logs[-2000:]
    assert len(set(hosts.values())) == 2 and hosts[0] == hosts[t - 1] != hosts[t]
    assert re.search(rf"joined gloo group via slurm \({hosts[0]}:\d+\)", logs)
    assert len(set(re.findall(rf"rank \d/{world} joined .* on host (n\d)", rank_logs(one)))) == 1
    same = export_bytes(across) == export_bytes(one)
    report(f"{backend} {n}x{t} vs {n1}x{t1} export", "", 0, "identical" if same else "DIFFERENT")
    assert same
    assert loss_lines(across) == loss_lines(one)


ALL_REDUCE = """
import socket, torch
from resdepth import dist
env = dist.init("cpu")
t = torch.tensor([float(env.rank + 1)])
dist.all_reduce_sum(t)
print(f"rank {env.rank} host {socket.gethostname()} sum {t.item():g}", flush=True)
dist.shutdown()
"""


@pytest.fixture
def debian_hosts_files():
    """Every node's hosts file gets Debian's ``127.0.1.1 <hostname>`` line first, as real
    clusters' nodes often have; restored afterwards (rewritten in place: the bind mounts follow)."""
    saved = {}
    for node in NODES:
        f = Path(f"/run/resdepth-slurm/hosts-{node}")
        saved[f] = f.read_text()
        with open(f, "w") as fh:  # same inode
            fh.write(f"127.0.1.1 {node}\n" + saved[f])
    yield
    for f, text in saved.items():
        with open(f, "w") as fh:
            fh.write(text)


def srun_all_reduce(nodes: int, tasks: int, **env: str) -> subprocess.CompletedProcess:
    child = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GLOO_", "NCCL_"))}
    child.update(OMP_NUM_THREADS="1", RESDEPTH_RENDEZVOUS_TIMEOUT="30", PYTHONPATH=str(ROOT))
    child.update(env)
    return subprocess.run(["srun", f"--nodes={nodes}", f"--ntasks-per-node={tasks}", "--time=3",
                           "--kill-on-bad-exit=1", sys.executable, "-c", ALL_REDUCE],
                          capture_output=True, text=True, env=child, timeout=120)


def test_node_whose_name_resolves_to_loopback_still_joins(debian_hosts_files):
    """With ``127.0.1.1 n2`` in n2's hosts file gloo would advertise 127.0.1.1 to n1 and fail in
    connectFullMesh; the interface that routes to the master is used instead."""
    check = subprocess.run(["srun", "--nodes=1", "-w", "n2", "getent", "hosts", "n2"],
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.split()[0] == "127.0.1.1"  # the trap is really set
    t0 = time.monotonic()
    out = srun_all_reduce(2, 2)
    report("gloo 2x2 with 127.0.1.1 hostnames", f"exit {out.returncode}", time.monotonic() - t0)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = sorted(l for l in out.stdout.splitlines() if l.startswith("rank"))
    assert len(lines) == 4 and all(l.endswith("sum 10") for l in lines)
    assert len({l.split()[3] for l in lines}) == 2  # two hosts


FREEZE = """
import os, signal, time, torch
from resdepth import dist
env = dist.init("cpu")
for i in range(1000):
    if env.rank == 1 and i == 3:
        os.kill(os.getpid(), signal.SIGSTOP)  # neither answers nor dies
    dist.all_reduce_sum(torch.ones(1))
    time.sleep(0.1)
"""


def test_survivor_of_a_frozen_peer_leaves_naming_it():
    """Any entry point (training, evaluation, prediction share ``dist.init``): a peer that stops
    answering ends the survivor within the collective timeout plus a few heartbeats, with one line
    naming the lost rank and host; srun then ends the step."""
    child = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GLOO_", "NCCL_"))}
    child.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), RESDEPTH_COLLECTIVE_TIMEOUT="8")
    t0 = time.monotonic()
    out = subprocess.run(["srun", "--nodes=2", "--ntasks-per-node=1", "--time=3", "--kill-on-bad-exit=1",
                          sys.executable, "-c", FREEZE], capture_output=True, text=True, env=child,
                         timeout=120)
    seconds = time.monotonic() - t0
    report("gloo 2x1 rank 1 frozen, timeout 8 s", f"exit {out.returncode}", seconds)
    lines = [l for l in out.stderr.splitlines() if l.startswith("resdepth: lost rank")]
    assert out.returncode != 0 and seconds < 40, out.stderr[-2000:]
    assert len(lines) == 1 and re.match(r"resdepth: lost rank 1 on host n\d \(10\.77", lines[0]), out.stderr[-2000:]


def test_interface_variable_wins(debian_hosts_files):
    """``GLOO_SOCKET_IFNAME`` set by the user (or the profile's socket_ifname) is used as given:
    ``lo`` here reproduces the failure the automatic choice avoids, and it ends quickly."""
    t0 = time.monotonic()
    out = srun_all_reduce(2, 1, GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo",
                          RESDEPTH_RENDEZVOUS_TIMEOUT="10")
    seconds = time.monotonic() - t0
    report("gloo 2x1 with GLOO_SOCKET_IFNAME=lo", f"exit {out.returncode}", seconds)
    assert out.returncode != 0 and seconds < 60
    assert "could not join the gloo process group" in out.stderr
    assert "a loopback address: set GLOO_SOCKET_IFNAME" in out.stderr


# ---------------------------------------------------------------------------------------------
# node failure, a lost peer, scontrol requeue: the job is requeued and resumes exactly



def newest_step(run: Path) -> int:
    return records.newest_checkpoint_step(run) or 0


def resumed_step(run: Path) -> int | None:
    m = re.findall(r"resumed from \S+ at step (\d+)", (run / "log-rank0.txt").read_text()
                   if (run / "log-rank0.txt").exists() else "")
    return int(m[-1]) if m else None


def follow_requeue(jid: str, run: Path, t0: float) -> dict:
    """Seconds from ``t0`` until the job was requeued (left RUNNING), ran again, and rank 0 logged
    its resumed step."""
    times: dict = {}
    wait_for(lambda: not job_running(jid), "the job to leave RUNNING", 120)
    times["requeued_s"] = time.monotonic() - t0
    wait_for(lambda: job_running(jid), "the job to run again", 180)
    times["running_again_s"] = time.monotonic() - t0
    wait_for(lambda: resumed_step(run) is not None, "the resumed step", 180)
    times["resumed_s"] = time.monotonic() - t0
    times["resumed_step"] = resumed_step(run)
    return times


def interrupted_run(runs: Runs, tmp_path: Path, backend: str, how: str) -> None:
    """A 2-node job interrupted after a checkpoint (``how``: kill the other node, kill the batch
    host, ``scontrol requeue``, or stop rank 1's process); it must be requeued, resume from the
    newest complete checkpoint on the remaining nodes and end bit-identical to the reference."""
    ref = runs.done(backend, 2, 1, LONG)  # finished first: a node failure must not touch it
    run = tmp_path / f"{backend}-{how}"
    t_start = time.monotonic()
    sub = submit_train(run, runs.shards, backend, 2, 1, LONG, ckpt_every=5)
    jid = sub.job_ids[0]
    wait_for(lambda: newest_step(run) >= 10, "the step-10 checkpoint", 300)
    first = job_nodes(jid)
    at_step = newest_step(run)
    if how == "node":
        t0 = kill_node(first[1])
    elif how == "batch-host":
        t0 = kill_node(first[0])
    elif how == "scontrol":
        subprocess.run(["scontrol", "requeue", jid], check=True)
        t0 = time.monotonic()
    else:  # "stopped-rank": rank 1's process freezes; its node stays up
        stop_rank(jid, first[1])
        t0 = time.monotonic()
    times = follow_requeue(jid, run, t0)
    state = wait_final(jid, 600)
    total = time.monotonic() - t_start
    same = state == "COMPLETED" and export_bytes(run) == export_bytes(ref)
    report(f"{backend} 2x1 {how} at ckpt {at_step} on {','.join(first)}", state, total,
           f"{'identical' if same else 'DIFFERENT'} {times}")
    assert state == "COMPLETED", rank_logs(run)[-3000:]
    assert "REQUEUED" in sacct_states(jid) or "NODE_FAIL" in sacct_states(jid)
    assert times["resumed_step"] >= 10
    assert same
    got, want = loss_lines(run), loss_lines(ref)
    assert got == want, (len(got), len(want), [(a, b) for a, b in zip(got, want) if a != b][:3],
                         (run / "stats.jsonl").read_text()[-1500:])
    return run, first


def stop_rank(jid: str, node: str) -> None:
    """SIGSTOP the job's Python processes on ``node``: a peer that neither answers nor dies."""
    out = subprocess.run(["ip", "netns", "pids", f"rdslurm-{node}"], capture_output=True, text=True,
                         check=True)
    stopped = 0
    for pid in out.stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"SLURM_JOB_ID={jid}".encode() in environ and b"submitit" in cmd:
            os.kill(int(pid), 19)  # SIGSTOP
            stopped += 1
    assert stopped, f"no process of job {jid} on {node}"


def test_deepspeed_node_failure_requeues_and_resumes_exactly(runs, tmp_path):
    interrupted_run(runs, tmp_path, "deepspeed", "node")


def test_batch_host_failure_requeues_and_resumes_exactly(runs, tmp_path):
    interrupted_run(runs, tmp_path, "ddp", "batch-host")


def test_scontrol_requeue_of_a_two_node_job_resumes_exactly(runs, tmp_path):
    interrupted_run(runs, tmp_path, "ddp", "scontrol")


def test_stopped_rank_is_named_and_the_job_requeued(runs, tmp_path):
    """A rank that stops answering (not a node failure: Slurm sees nothing): the survivor's
    collective times out after the configured seconds, it names the lost rank and host in one line
    and requeues the job, which resumes exactly."""
    run, first = interrupted_run(runs, tmp_path, "ddp", "stopped-rank")
    lines = [l for l in (run / "log-rank0.txt").read_text().splitlines() if "lost rank 1 on host" in l]
    assert len(lines) == 1 and f"lost rank 1 on host {first[1]}" in lines[0], lines


# ---------------------------------------------------------------------------------------------
# evaluation over three nodes, the pipeline across nodes, status from Slurm's records


def test_evaluation_array_over_three_nodes_gives_one_process_metrics(tmp_path):
    from resdepth.eval import main
    from tests.eval.runner import assert_metrics_close, make_exports, metrics, write_split

    data = tmp_path / "test"
    write_split(data, [5, 3, 8, 1, 6], seed=3)
    exports = make_exports(tmp_path / "exports")
    args = [f"regression={exports['regression']}", f"diffusion={exports['diffusion']}", f"data={data}",
            "device=cpu", "ensemble=2", "steps=4", "batch=2", "unit_size=3", "preview=0"]
    # one array task per node: each asks for all of a node's CPUs
    cpus = int(subprocess.run(["sinfo", "-h", "-n", "n1", "-o", "%c"], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    t0 = time.monotonic()
    tasks, merge = submit.submit_eval(submit.eval_config([*args, f"out={tmp_path / 'array'}"]),
                                      resources(1, 1, cpus_per_task=cpus), "slurm", array=3)
    state = wait_final(merge.job_ids[0], 600)
    report("eval array 3 tasks", state, time.monotonic() - t0)
    assert state == "COMPLETED"
    nodes = set()
    for jid in tasks.job_ids:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", jid, "--format=NodeList"],
                             capture_output=True, text=True, check=True).stdout.split()
        nodes.update(out)
    assert nodes == set(NODES), nodes
    assert main(submit.eval_config([*args, f"out={tmp_path / 'one'}"])) == 0
    assert_metrics_close(metrics(tmp_path / "array"), metrics(tmp_path / "one"))


def test_pipeline_runs_across_nodes_and_status_shows_nodes(runs, tmp_path):
    """``resdepth-launch pipeline`` with 2-node training stages; ``status`` lists where each ran."""
    root = tmp_path / "pipe"
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "resdepth.launch", "pipeline", "--cluster", "slurm", "--profile", "local",
         "--nodes", "2", "--tasks-per-node", "1", "--time", "15", "--array", "2", "--root", str(root),
         "--regression", "baseline_regression", "--diffusion", "baseline_diffusion",
         "--wait", "--eval-set", "ensemble=2", "--eval-set", "steps=3", f"data.root={runs.shards}",
         "trainer.max_steps=4", "trainer.ckpt_every_steps=0", *TINY],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    report("pipeline 2-node stages", f"exit {out.returncode}", time.monotonic() - t0)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = status.collect(root)
    assert all(r.state == "COMPLETED" for r in rows), [(r.stage, r.state) for r in rows]
    train_rows = [r for r in rows if r.stage in ("regression", "diffusion")]
    assert all(len(r.runs) == 1 and re.match(r"n\[\d-\d\] COMPLETED|n\[\d,\d\] COMPLETED", r.runs[0])
               for r in train_rows), [r.runs for r in train_rows]
    assert (root / "eval" / "metrics.json").exists()
    table = subprocess.run([sys.executable, "-m", "resdepth.launch", "status", str(root)],
                           capture_output=True, text=True, check=True).stdout
    assert "nodes (each run)" in table and "COMPLETED" in table


def test_status_names_the_failed_node_and_the_requeue(runs, tmp_path):
    """After a node failure, ``status`` shows both runs of the job, the node that went down
    under the first, and one requeue."""
    run, first = interrupted_run(runs, tmp_path, "ddp", "node")
    (row,) = status.collect(run)
    assert row.requeues == 1
    assert len(row.runs) == 2 and row.runs[0].startswith(f"n[") and "NODE_FAIL" in row.runs[0]
    assert f"{first[1]} down" in row.runs[0] and row.runs[1].endswith("COMPLETED")
