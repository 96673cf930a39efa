"""``status`` and ``cancel`` of a run or pipeline directory, from its records and sacct/squeue."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from resdepth.launch import records

NEVER_RAN = ("CANCELLED", "PENDING")
REQUEUED = ("REQUEUED", "NODE_FAIL", "PREEMPTED")  # states of an incarnation that Slurm ran again
FAILED = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE")


@dataclass
class JobRow:
    stage: str
    job_id: str
    dir: Path
    depends_on: str | None = None
    state: str = "UNKNOWN"
    reason: str = ""
    exit_code: str = ""
    started: bool = False
    requeues: int = 0
    step: int | None = None
    last_log: list[str] = field(default_factory=list)
    note: str = ""
    runs: list[str] = field(default_factory=list)  # per incarnation: nodes, state, failed nodes


def stages_of(path: Path) -> list[dict]:
    """Pipeline stages from ``pipeline.json``, or the one run directory holding ``jobs.json``."""
    path = Path(path)
    if (path / records.PIPELINE_FILE).exists():
        return records.read_pipeline(path)
    jobs = records.read_jobs(path)
    if not jobs:
        raise FileNotFoundError(f"{path}: neither {records.PIPELINE_FILE} nor {records.JOBS_FILE}")
    return [dict(stage=j["kind"], dir=str(path), job_ids=[j["job_id"]], depends_on=None)
            for j in jobs]


def _sacct(job_ids: list[str]) -> dict[str, list[dict]]:
    """Every recorded incarnation (-D) of each job or array task, oldest first."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    fmt = "JobID,State,ExitCode,Start,Elapsed,NodeList,End"
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(job_ids),
                          f"--format={fmt}"], capture_output=True, text=True, timeout=60)
    rows: dict[str, list[dict]] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 7:
            continue
        jid, state, exit_code, start, elapsed, nodes, end = parts
        rows.setdefault(jid, []).append(dict(state=state.split()[0], exit_code=exit_code,
                                             start=start, elapsed=elapsed, nodes=nodes, end=end))
    return rows


def _node_down_events() -> list[dict]:
    """Slurm's record of nodes going down (``sacctmgr show event``): node, start, reason."""
    if not shutil.which("sacctmgr"):
        return []
    out = subprocess.run(["sacctmgr", "-n", "-P", "show", "event", "format=NodeName,Start,State,Reason"],
                         capture_output=True, text=True, timeout=60)
    events = []
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0] and parts[2].startswith(("DOWN", "FAIL", "DRAIN")):
            events.append(dict(node=parts[0], start=parts[1], reason=parts[3]))
    return events


def _expand(nodelist: str) -> list[str]:
    from submitit.slurm.slurm import _parse_node_list  # Slurm's own grammar, kept by submitit

    return _parse_node_list(nodelist) if nodelist not in ("None assigned", "None", "") else []


def describe_runs(hist: list[dict], events: list[dict]) -> list[str]:
    """One line per incarnation: where it ran, how it ended, and which of its nodes went down
    while it ran (Slurm's node events), e.g. ``n[1-2] NODE_FAIL: n2 down 12:00:05 (Not responding)``."""
    lines = []
    for h in hist:
        if h["nodes"] in ("None assigned", "None", ""):
            continue
        line = f"{h['nodes']} {h['state']}"
        hosts, end = _expand(h["nodes"]), h.get("end") or "9999"
        down = [e for e in events if e["node"] in hosts and h["start"] <= e["start"] <= end]
        if down and h["state"] in REQUEUED + ("FAILED", "CANCELLED"):
            line += ": " + ", ".join(f"{e['node']} down {e['start'].split('T')[-1]} ({e['reason']})"
                                     for e in down)
        lines.append(line)
    return lines


def _squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """State and reason of jobs Slurm still holds (fresher than accounting)."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
                         capture_output=True, text=True, timeout=60)
    found = {}
    for line in out.stdout.splitlines():
        jid, state, reason = (line.split("|") + ["", ""])[:3]
        found[jid] = (state, reason if reason != "None" else "")
    return found


def _pending_array(acct: dict[str, list[dict]], job_id: str) -> list[dict]:
    """Array tasks that never started are accounted together, as ``BASE_[0-3]``."""
    base = job_id.split("_")[0]
    return next((h for k, h in acct.items() if k.startswith(base + "_[")), []) if "_" in job_id else []


def _last_log(row: JobRow, folder: Path | None) -> list[str]:
    lines = records.tail(row.dir / "log-rank0.txt")
    if not lines and folder is not None:
        lines = records.tail(folder / f"{row.job_id}_0_log.err") or \
            records.tail(folder / f"{row.job_id}_0_log.out")
    return lines


def collect(path: Path) -> list[JobRow]:
    """One row per job (array tasks expanded) with Slurm state, requeues, checkpoint and log tail."""
    rows: list[JobRow] = []
    folders: dict[str, Path] = {}
    for st in stages_of(path):
        d = Path(st["dir"])
        for rec in records.read_jobs(d):
            folders[rec["job_id"]] = Path(rec["folder"])
        for jid in st["job_ids"]:
            rows.append(JobRow(st["stage"], jid, d, st.get("depends_on")))
    bases = sorted({r.job_id.split("_")[0] for r in rows})
    acct, queue = _sacct(bases), _squeue(bases)
    node_events = _node_down_events() if any(h["state"] == "NODE_FAIL" for hs in acct.values() for h in hs) else []
    by_stage: dict[str, list[JobRow]] = {}
    for r in rows:
        hist = acct.get(r.job_id) or _pending_array(acct, r.job_id)
        if hist:
            r.state, r.exit_code = hist[-1]["state"], hist[-1]["exit_code"]
            # A pending job's Start can hold its *expected* start time, also in the record of a
            # job cancelled before it ran: only an allocation proves that it started.
            r.started = any(h["nodes"] not in ("None assigned", "None", "") for h in hist)
            r.requeues = sum(1 for h in hist[:-1] if h["state"] in REQUEUED)
            r.runs = describe_runs(hist, node_events)
        if r.job_id in queue:
            r.state, r.reason = queue[r.job_id]
            r.started = r.started or r.state == "RUNNING"
        events = [e for e in records.read_events(r.dir) if e.get("job_id") == r.job_id]
        r.requeues = max(r.requeues, sum(1 for e in events if e["event"] == "requeue"))
        if any(e["event"] == "requeue_limit" for e in events):
            r.note = "stopped: requeue limit reached"
        elif (marker := records.stop_marker(r.dir)) and r.state != "COMPLETED":
            r.note = f"saved on {marker.get('signal')} at step {marker.get('step')}"
        r.step = records.newest_checkpoint_step(r.dir)
        r.last_log = _last_log(r, folders.get(r.job_id.split("_")[0]))
        by_stage.setdefault(r.stage, []).append(r)
    for r in rows:  # say why a dependent job never ran
        parents = by_stage.get(r.depends_on or "", [])
        bad = [p for p in parents if p.state in FAILED or p.note]
        if bad and not r.started and (r.state in NEVER_RAN or "Dependency" in r.reason):
            r.note = f"never ran: {r.depends_on} job {bad[0].job_id} {bad[0].state}"
    return rows


def render_run(path: Path) -> int:
    """A run started by hand or by torchrun (no launcher records): one line, and the exit status
    the trainer had: 0 finished, 3 saved on a stop signal (torchrun reports both failures and
    such saves as 1), 1 otherwise (failed, killed or still running)."""
    import yaml

    marker = records.stop_marker(path)
    if marker:
        print(f"{path}: saved on {marker.get('signal')} at step {marker.get('step')} "
              f"({marker.get('checkpoint')}); exit status {marker.get('exit_code')}: not a failure, "
              "rerun the same command to continue")
        return int(marker.get("exit_code", 3))
    export = Path(path) / "export" / "model.json"
    wanted = (yaml.safe_load((Path(path) / "config.yaml").read_text()) or {}) \
        .get("trainer", {}).get("max_steps")
    if export.exists() and json.loads(export.read_text()).get("step") == wanted:
        print(f"{path}: finished at step {wanted}")
        return 0
    print(f"{path}: not finished (failed, killed or still running); newest checkpoint step "
          f"{records.newest_checkpoint_step(path)}; see {path}/log-rank0.txt")
    return 1


def render(path: Path) -> None:
    """Print the status table."""
    from rich.console import Console
    from rich.table import Table

    rows = collect(path)
    table = Table(title=f"resdepth jobs in {path}")
    for col in ("stage", "job", "state", "requeues", "nodes (each run)", "checkpoint", "last log lines"):
        table.add_column(col, overflow="fold")
    colour = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow"}
    for r in rows:
        state = r.state + (f" ({r.reason})" if r.reason else "")
        if r.note:
            state += f"\n{r.note}"
        style = colour.get(r.state, "red" if r.state in FAILED else "")
        table.add_row(r.stage, r.job_id, f"[{style}]{state}[/]" if style else state,
                      str(r.requeues), "\n".join(r.runs) or "-", "-" if r.step is None else f"step {r.step}",
                      "\n".join(r.last_log))
    Console(width=max(140, shutil.get_terminal_size().columns)).print(table)


def cancel(path: Path) -> list[str]:
    """scancel every Slurm job recorded for this run or pipeline; returns the ids."""
    ids: list[str] = []
    for st in stages_of(path):
        for rec in records.read_jobs(Path(st["dir"])):
            if rec.get("cluster") == "slurm" and rec["job_id"] not in ids:
                ids.append(rec["job_id"])
    if ids:
        subprocess.run(["scancel", *ids], check=True, timeout=60)
    return ids
