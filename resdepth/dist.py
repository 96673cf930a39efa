"""Distributed plumbing: one process, torchrun, srun under Slurm or submitit's local executor,
detected from the environment.

Everything rank-related in resdepth goes through here: ``init``, ``rank``, ``world_size``,
``is_main``, ``barrier``, ``all_reduce_sum``, ``print0``, ``shutdown``. ``init`` is the only place
that creates the process group, for training (both backends), evaluation and prediction:

* the launcher's variables are trusted when present: torchrun's ``RANK``/``WORLD_SIZE``/
  ``MASTER_ADDR``/``MASTER_PORT`` (whose address is the agent's own store when
  ``TORCHELASTIC_USE_AGENT_STORE=True``), Slurm's task layout, submitit's local task layout;
* a world of one needs no rendezvous: when a group is wanted anyway (DeepSpeed), it is built on a
  store inside the process, so no port is chosen, listened on or waited for;
* start-up is bounded by ``RESDEPTH_RENDEZVOUS_TIMEOUT`` seconds (default 300); a peer that never
  arrives, or a port already taken, ends in ``RendezvousError`` naming address, port, rank and
  world size and what to check;
* across hosts, gloo and NCCL use the interface that routes towards the master
  (``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME`` win when set): a host whose own name resolves to a
  loopback address (Debian's ``127.0.1.1 <hostname>`` line) would otherwise advertise it to its
  peers, and they could never connect;
* every collective is bounded by ``RESDEPTH_COLLECTIVE_TIMEOUT`` seconds when set (else the caller's
  default, which suits GPUs); a peer that dies after start-up is named by ``lost_peer``: each rank
  writes a heartbeat into the rendezvous store, and the rank whose heartbeat stopped, or rank 0
  when the store itself is gone, is the one lost.
"""
from __future__ import annotations

import datetime
import fcntl
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.distributed as torch_dist
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
SUBMITIT_LOCAL_VARS = ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID",
                       "SUBMITIT_LOCAL_JOB_ID")
RENDEZVOUS_TIMEOUT_VAR = "RESDEPTH_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0
COLLECTIVE_TIMEOUT_VAR = "RESDEPTH_COLLECTIVE_TIMEOUT"
IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_SIOCGIFADDR = 0x8915  # Linux ioctl: the IPv4 address of an interface
# What gloo, NCCL and the store say when a peer is gone or silent.
_PEER_ERROR = re.compile(r"gloo|nccl|connection|timed out|closed by peer|broken pipe", re.IGNORECASE)


class DistEnvError(UserError, RuntimeError):
    """The environment names some but not all of what a distributed launch needs."""


class RendezvousError(DistEnvError):
    """The ranks the environment names did not meet: says where, who, and what to check."""


@dataclass
class DistEnv:
    """Where this process sits in the job."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm | submitit
    hosts: tuple[str, ...] = ()  # the job's nodes when the launcher says (Slurm), first = master

    def export(self, environ: Optional[dict] = None) -> None:
        """Write the torch.distributed env:// variables for this process."""
        environ = os.environ if environ is None else environ
        environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size),
                       LOCAL_RANK=str(self.local_rank), MASTER_ADDR=self.master_addr,
                       MASTER_PORT=str(self.master_port))


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list such as ``gpu[001-004,010],cpu7`` into host names."""
    from submitit.slurm.slurm import _parse_node_list  # Slurm's own grammar, kept by submitit

    return _parse_node_list(nodelist)


def master_port_for_job(job_id: str) -> int:
    """A port derived from the Slurm job id, so every task of a job agrees without talking."""
    digits = "".join(ch for ch in str(job_id).split("_")[0] if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def detect_env(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """The process's rank and rendezvous from torchrun's, Slurm's or submitit's local variables
    (torchrun's win). A world of one needs no ``MASTER_ADDR``/``MASTER_PORT``."""
    if "RANK" in environ or "WORLD_SIZE" in environ:
        world = int(environ.get("WORLD_SIZE", "0") or 0)
        needed = TORCHRUN_VARS if world != 1 else TORCHRUN_VARS[:3]
        missing = [v for v in needed if v not in environ]
        if missing:
            present = [v for v in TORCHRUN_VARS if v in environ]
            raise DistEnvError(f"half-set torch.distributed environment: {', '.join(present)} set but "
                               f"{', '.join(missing)} missing; set all of {', '.join(TORCHRUN_VARS)} "
                               "or none")
        return DistEnv(int(environ["RANK"]), world, int(environ["LOCAL_RANK"]),
                       environ.get("MASTER_ADDR", "127.0.0.1"),
                       int(environ.get("MASTER_PORT", 0) or 0), "torchrun")
    env = dict(environ)
    if "SLURM_JOB_NODELIST" not in env and "SLURM_NODELIST" in env:
        env["SLURM_JOB_NODELIST"] = env["SLURM_NODELIST"]
    # A Slurm batch script (not an srun step) has SLURM_JOB_ID but no task layout: one process.
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        missing = [v for v in SLURM_VARS if v not in env]
        if missing:
            raise DistEnvError(f"half-set Slurm environment: {', '.join(missing)} missing "
                               f"(need {', '.join(SLURM_VARS)})")
        hosts = parse_nodelist(env["SLURM_JOB_NODELIST"])
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]),
                       env.get("MASTER_ADDR", hosts[0]), _job_port(env, env["SLURM_JOB_ID"]), "slurm",
                       tuple(hosts))
    if "SUBMITIT_LOCAL_GLOBALID" in env:  # submitit's LocalExecutor: tasks on this machine
        missing = [v for v in SUBMITIT_LOCAL_VARS if v not in env]
        if missing:
            raise DistEnvError(f"half-set submitit local environment: {', '.join(missing)} missing")
        return DistEnv(int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env["SUBMITIT_LOCAL_NTASKS"]),
                       int(env["SUBMITIT_LOCAL_LOCALID"]), env.get("MASTER_ADDR", "127.0.0.1"),
                       _job_port(env, env["SUBMITIT_LOCAL_JOB_ID"]), "submitit")
    return DistEnv()


def _job_port(env: Mapping[str, str], job_id: str) -> int:
    """A port set by the job script (``RESDEPTH_MASTER_PORT``, then ``MASTER_PORT``), else one
    derived from the job id, as submitit's ``TorchDistributedEnvironment`` does."""
    return int(env.get("RESDEPTH_MASTER_PORT") or env.get("MASTER_PORT") or master_port_for_job(job_id))


def _seconds_var(name: str, default: float, environ: Mapping[str, str]) -> float:
    """A positive number of seconds from ``environ[name]``, or ``default`` when unset."""
    text = environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistEnvError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def rendezvous_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds the ranks wait for each other at start-up: ``RESDEPTH_RENDEZVOUS_TIMEOUT`` or 300."""
    return _seconds_var(RENDEZVOUS_TIMEOUT_VAR, DEFAULT_RENDEZVOUS_TIMEOUT_S, environ)


def collective_timeout_s(default: float, environ: Mapping[str, str] = os.environ) -> float:
    """Seconds any collective may wait for a peer: ``RESDEPTH_COLLECTIVE_TIMEOUT`` or ``default``
    (the caller's: long enough for a GPU step or a slow evaluation unit)."""
    return _seconds_var(COLLECTIVE_TIMEOUT_VAR, default, environ)


# ---- which interface gloo and NCCL use across hosts -------------------------------------------


def _is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def _resolve(name: str) -> Optional[str]:
    """The IPv4 address ``name`` resolves to here, or None."""
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None


def _route_source(addr: str) -> Optional[str]:
    """This host's address on the route towards ``addr`` (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def interface_of(addr: str) -> Optional[str]:
    """The name of the interface that holds the IPv4 address ``addr``, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(packed[20:24]) == addr:
                return name
    return None


def pick_interface(at: DistEnv, environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The interface that routes towards the master (or, on the master's host, towards the first
    other node), for a job whose ranks span several hosts; None when the job is on one host or
    both ``GLOO_SOCKET_IFNAME`` and ``NCCL_SOCKET_IFNAME`` are set. Raises ``DistEnvError`` naming
    the address and the variables when no such interface exists."""
    if all(environ.get(v) for v in IFNAME_VARS) or len(set(at.hosts)) < 2:
        return None
    me = socket.gethostname()
    targets = [at.master_addr] + [h for h in at.hosts if h.split(".")[0] != me.split(".")[0]]
    tried = []
    for target in targets:
        addr = _resolve(target)
        source = _route_source(addr) if addr else None
        tried.append(f"{target} -> {addr or 'unresolved'} via {source or 'no route'}")
        if source and not _is_loopback(source):
            name = interface_of(source)
            if name:
                return name
    own = _resolve(me)
    raise DistEnvError(
        f"rank {at.rank} on host {me} (which resolves to {own}) found no network interface towards "
        f"the other nodes of the job ({'; '.join(tried)}): set GLOO_SOCKET_IFNAME (and "
        "NCCL_SOCKET_IFNAME on GPUs) to the interface that reaches them, e.g. the cluster "
        "profile's socket_ifname")


def _use_interface(at: DistEnv) -> str:
    """Export the interface gloo/NCCL should use (unless set) and say where this rank runs."""
    name = pick_interface(at)
    for var in IFNAME_VARS:
        if name and not os.environ.get(var):
            os.environ[var] = name
    host = socket.gethostname()
    gloo_if = os.environ.get("GLOO_SOCKET_IFNAME", "")
    where = f"host {host} ({_resolve(host) or 'unresolved'}"
    where += f", interface {gloo_if})" if gloo_if else ")"
    return where


_ENV = DistEnv()
_HOST_GROUP = None  # gloo group for host tensors when the default group is NCCL (see all_reduce_sum)
_HEARTBEAT: Optional["_Heartbeat"] = None  # this rank's heartbeat into the rendezvous store


class _Heartbeat(threading.Thread):
    """Counts up ``resdepth/alive/<rank>`` in the rendezvous store every ``interval`` seconds, on a
    store connection of its own, so that ``lost_peer`` can tell which rank stopped."""

    def __init__(self, at: DistEnv, interval: float) -> None:
        super().__init__(name="resdepth-heartbeat", daemon=True)
        self.at, self.interval = at, interval
        self.stopped = threading.Event()

    def client(self):
        return torch_dist.TCPStore(self.at.master_addr, self.at.master_port, is_master=False,
                                   timeout=datetime.timedelta(seconds=max(2.0, 2 * self.interval)),
                                   wait_for_workers=False)

    def run(self) -> None:
        try:
            store = self.client()
            while not self.stopped.is_set():
                store.add(f"resdepth/alive/{self.at.rank}", 1)
                self.stopped.wait(self.interval)
        except (RuntimeError, OSError):  # the store's host went away: lost_peer says so
            pass


def init(device_type: str = "auto", timeout_s: float = 600.0, group: bool = False,
         rendezvous_timeout: Optional[float] = None) -> DistEnv:
    """Join the process group (gloo on CPU, NCCL on GPU) when the world has more than one process,
    and in a world of one too with ``group`` (DeepSpeed wants a group); later calls change nothing.

    ``timeout_s`` bounds every collective; ``rendezvous_timeout`` (default: ``rendezvous_timeout_s()``)
    bounds the start-up, which otherwise raises ``RendezvousError``.
    """
    global _ENV, _HOST_GROUP
    _ENV = detect_env()
    if torch_dist.is_initialized() or (_ENV.world_size == 1 and not group):
        return _ENV
    timeout_s = collective_timeout_s(timeout_s)
    _HOST_GROUP = None  # belonged to a group destroyed since
    use_cuda = torch.cuda.is_available() if device_type == "auto" else device_type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(device())  # local_rank % visible GPUs: one GPU per task under Slurm
    timeout = datetime.timedelta(seconds=timeout_s)
    if _ENV.world_size == 1:
        # Nobody to meet: a store inside this process, never a port (under torchrun the agent's
        # store would answer, but a port of our own would make every rank a client of nothing).
        os.environ.setdefault("LOCAL_RANK", str(_ENV.local_rank))  # DeepSpeed reads it
        torch_dist.init_process_group(backend, store=torch_dist.HashStore(), rank=0, world_size=1,
                                      timeout=timeout)
        log.info("one process (%s): %s group on a process-local store", _ENV.source, backend)
        return _ENV
    wait = rendezvous_timeout_s() if rendezvous_timeout is None else rendezvous_timeout
    deadline = time.monotonic() + wait
    where = _use_interface(_ENV)
    _ENV.export()
    try:
        # env:// as torch reads it: a client of torchrun's agent store when it says so, else rank 0
        # serves the store; every rank then meets the others through it within ``wait``.
        serves = _ENV.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        if not serves:
            _wait_for_store(_ENV.master_addr, _ENV.master_port, deadline)
        # The serving store counts whole seconds and gives up at the first one past its timeout.
        left = max(1.0, deadline - time.monotonic() - (1.0 if serves else 0.0))
        store, rank_, world = next(torch_dist.rendezvous(
            "env://", timeout=datetime.timedelta(seconds=left)))
        torch_dist.init_process_group(backend, store=torch_dist.PrefixStore("default_pg", store),
                                      rank=rank_, world_size=world, timeout=timeout)
    except (RuntimeError, ValueError, OSError) as e:  # torch's DistError is a RuntimeError
        raise RendezvousError(_rendezvous_failure(_ENV, backend, wait, e)) from e
    store.set_timeout(timeout)  # later groups (new_group) wait like collectives do
    store.set(f"resdepth/where/{_ENV.rank}", where)
    _start_heartbeat(_ENV, timeout_s)
    _name_lost_peers_on_exit()
    log.info("rank %d/%d joined %s group via %s (%s:%d) on %s, collectives time out after %g s",
             _ENV.rank, _ENV.world_size, backend, _ENV.source, _ENV.master_addr, _ENV.master_port,
             where, timeout_s)
    return _ENV


def _start_heartbeat(at: DistEnv, timeout_s: float) -> None:
    global _HEARTBEAT
    _stop_heartbeat()
    # Several beats per collective timeout, so a stopped rank is told apart before anyone gives up.
    _HEARTBEAT = _Heartbeat(at, max(0.5, min(5.0, timeout_s / 8)))
    _HEARTBEAT.start()


def _stop_heartbeat() -> None:
    global _HEARTBEAT
    if _HEARTBEAT is not None:
        _HEARTBEAT.stopped.set()
        _HEARTBEAT = None


def _name_lost_peers_on_exit() -> None:
    """Make an uncaught collective failure (training, evaluation or prediction run by srun or
    torchrun) print first the line naming the lost rank and host; chained to the previous hook."""
    previous = sys.excepthook
    if getattr(previous, "resdepth_lost_peer", False):
        return

    def hook(kind, value, tb):
        line = lost_peer(value) if isinstance(value, Exception) else None
        if line:
            log.error(line)
            print(f"resdepth: {line}", file=sys.stderr, flush=True)
        previous(kind, value, tb)

    hook.resdepth_lost_peer = True
    sys.excepthook = hook


def lost_peer(err: BaseException) -> Optional[str]:
    """One line naming the rank(s) and host(s) lost when ``err`` came from a collective whose peer
    died or stopped (its heartbeat no longer advances, or the store on rank 0's host is gone);
    None when ``err`` is not about a peer or every peer is alive. Waits a few heartbeats."""
    beat = _HEARTBEAT
    if beat is None or not isinstance(err, (RuntimeError, OSError)):
        return None
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if not (isinstance(err, torch_dist.DistError) or re.search(_PEER_ERROR, cause)):
        return None  # not about a peer: fail at once, without waiting for heartbeats
    try:
        store = beat.client()
        keys = [f"resdepth/alive/{r}" for r in range(beat.at.world_size)]
        before = [store.add(k, 0) for k in keys]
        time.sleep(3 * beat.interval)
        after = [store.add(k, 0) for k in keys]
    except (RuntimeError, OSError):
        return (f"lost rank 0 on host {beat.at.master_addr}: its rendezvous store does not answer "
                f"(rank {beat.at.rank} saw: {cause})")
    lost = [r for r in range(beat.at.world_size) if r != beat.at.rank and after[r] == before[r]]
    if not lost:
        return None
    names = ", ".join(f"rank {r} on {store.get(f'resdepth/where/{r}').decode()}" for r in lost)
    return f"lost {names}: no heartbeat for {3 * beat.interval:g} s (rank {beat.at.rank} saw: {cause})"


def _wait_for_store(addr: str, port: int, deadline: float) -> None:
    """Return once ``addr:port`` accepts connections; a TimeoutError at ``deadline`` (torch's store
    client keeps retrying for up to about twice its timeout)."""
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((addr, port), timeout=max(0.05, min(1.0, left))):
                return
        except OSError as e:
            if left <= 0:
                raise TimeoutError(f"nothing listens at {addr}:{port} ({e})") from e
            time.sleep(min(0.2, max(0.0, left)))


def _rendezvous_failure(at: DistEnv, backend: str, wait: float, err: BaseException) -> str:
    """What failed, where, and what to check, in a few lines instead of torch's traceback."""
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
    head = (f"rank {at.rank} of world size {at.world_size} could not join the {backend} process group "
            f"at {at.master_addr}:{at.master_port} (from {at.source}) within {wait:g} s: {cause}")
    if "EADDRINUSE" in cause or "address already in use" in cause.lower():
        return (f"{head}. Port {at.master_port} on {at.master_addr} is taken by another process (another "
                "job on this node, or an earlier run still exiting): free it, or choose a free port "
                "with MASTER_PORT (RESDEPTH_MASTER_PORT in a Slurm job).")
    loopback = re.search(r"remote=\[(127\.[0-9.]+|::1)\]", cause)
    if "connectFullMesh" in cause or loopback:
        said = f"a peer advertised {loopback.group(1)}, a loopback address" if loopback else \
            "the peers could not connect to each other's advertised addresses"
        return (f"{head}. After the rendezvous {said}: set GLOO_SOCKET_IFNAME (NCCL_SOCKET_IFNAME on "
                "GPUs, or the cluster profile's socket_ifname) to the interface that reaches the other "
                f"nodes (now GLOO_SOCKET_IFNAME={os.environ.get('GLOO_SOCKET_IFNAME', '')!r}), or fix "
                "the hosts file line that maps this host's name to a loopback address.")
    return (f"{head}. Check that all {at.world_size} processes were started (torchrun "
            "--nproc_per_node/--nnodes, srun -n, WORLD_SIZE) and none failed before this point (see "
            "their logs), that every rank was given the same MASTER_ADDR and MASTER_PORT, and that "
            f"{at.master_addr} is rank 0's host with port {at.master_port} reachable from every node "
            f"(firewall); ranks that start slowly need a larger {RENDEZVOUS_TIMEOUT_VAR} (seconds).")


def env() -> DistEnv:
    """The environment ``init`` found."""
    return _ENV


def is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return _ENV.local_rank


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This rank's device: GPU ``local_rank % device_count``, or the CPU.

    The modulo serves both launch styles: torchrun (or srun without GPU binding) shows every GPU
    of the node to every task, so local rank i takes GPU i; Slurm's ``--gpus-per-task=1`` /
    ``--gpu-bind`` shows each task only its own GPU, which is then ``cuda:0`` whatever the rank.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


def barrier() -> None:
    if is_dist():
        torch_dist.barrier()


def _host_group():
    """A gloo group beside the NCCL one, made on first use (every rank reaches the same first
    host-tensor reduction, so creation stays collective)."""
    global _HOST_GROUP
    if _HOST_GROUP is None:
        _HOST_GROUP = torch_dist.new_group(backend="gloo")
    return _HOST_GROUP


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (float64 sums stay exact for counts) and return it.

    Host tensors (stop flags, counters, evaluation sums) go through gloo even when the default
    group is NCCL: moving them to the GPU and back would wait for all queued GPU work every step.
    """
    if is_dist():
        if torch_dist.get_backend() == "nccl" and t.device.type == "cpu":
            torch_dist.all_reduce(t, group=_host_group())
        else:
            torch_dist.all_reduce(t)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (used for stop signals)."""
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only (console output for people; the library logs through ``log``)."""
    if is_main():
        print(*args, **kwargs, flush=True)


def shutdown() -> None:
    """Leave the process group cleanly (without it multi-rank gloo runs abort at exit)."""
    global _HOST_GROUP
    if is_dist():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
    _stop_heartbeat()
    _HOST_GROUP = None
