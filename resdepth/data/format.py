"""The on-disk sample format: WebDataset tar shards plus one ``index.json`` per split.

A dataset root holds one directory per split (``train/``, ``val/``, ``test/``). A split directory
holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``index.json``.

One sample is a group of tar members sharing a key (``<key>.<name>``; keys contain no dot):

=================  ========================  ===================================================
member             type                      meaning
=================  ========================  ===================================================
``__key__``        tar member prefix         unique sample id, e.g. ``train_0000042``
``events.npy``     float16 ``[B, H, W]``     event voxel grid over the window that ends at the
                                             depth frame; B time bins, signed polarity weights,
                                             bilinear in time (E2Depth), not normalised
``depth.npy``      float32 ``[1, H, W]``     depth in metres along the optical axis; 0 where
                                             invalid; never NaN or inf
``mask.npy``       uint8 ``[1, H, W]``       1 where the depth is valid, else 0
``meta.json``      JSON object               ``source``, ``sequence``, ``t_start``, ``t_end``
                                             (seconds), from recordings ``frame`` and
                                             ``num_events``, optional ``intrinsics``
                                             ``{"fx", "fy", "cx", "cy"}``
``context.npy``    float16 ``[N, H, W]``     only in splits packed with ``--context-ms MS
                                             --context-bins N``: the voxel grid of the events in
                                             ``[t_start - MS, t_start)`` (what the camera saw
                                             before the window); ``meta.json`` then holds
                                             ``context`` ``{"t_start", "num_events"}`` and, for
                                             a window near a recording's start,
                                             ``"missing_ms"`` (time before the first event: zeros)
=================  ========================  ===================================================

``index.json`` (written last, atomically; a split without it is incomplete)::

    {"format": "resdepth-shards", "version": 1,
     "shards": [{"name": "shard-000000.tar", "nsamples": 64, "bytes": 4915200,
                 "sha256": "..."}, ...],
     "num_samples": 256,
     "shapes": {"events.npy": [B, H, W], "depth.npy": [1, H, W], "mask.npy": [1, H, W]},
     "dtypes": {"events.npy": "float16", "depth.npy": "float32", "mask.npy": "uint8"},
     "bins": B, "height": H, "width": W,
     "depth_stats": {"min", "max", "mean", "p2", "p98", "valid_fraction"},   # valid pixels only
     "sequences": [{"name", "samples", ...}, ...],   # the packed recordings ([] for synthetic)
     "context": {"ms": MS, "bins": N},   # only with context; shapes then has "context.npy"
     "params": {...}}                 # the command and parameters that created the split

Percentiles come from a log-spaced histogram (0.1 % relative resolution); min, max and mean are
exact.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from resdepth.utils.atomic import write_json_atomic  # noqa: F401 - used as fmt.write_json_atomic
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

FORMAT_NAME = "resdepth-shards"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
ARRAY_KEYS = ("events.npy", "depth.npy", "mask.npy")
SAMPLE_KEYS = ARRAY_KEYS + ("meta.json",)
DTYPES = {"events.npy": "float16", "depth.npy": "float32", "mask.npy": "uint8"}
F16_MAX = float(np.finfo(np.float16).max)
INDEX_REQUIRED = ("version", "shards", "num_samples", "shapes", "dtypes", "bins")
CONTEXT_KEY = "context.npy"
CONTEXT_DTYPE = "float16"


class DataError(UserError):
    """Shards or an index that cannot be used; the message names the file and the problem."""


def shard_name(i: int) -> str:
    """The file name of shard ``i`` in a split directory."""
    return f"shard-{i:06d}.tar"


def shapes_for(bins: int, height: int, width: int, context_bins: int = 0) -> dict[str, list[int]]:
    """The per-key array shapes of a split (``context.npy`` only when ``context_bins``)."""
    shapes = {"events.npy": [bins, height, width], "depth.npy": [1, height, width],
              "mask.npy": [1, height, width]}
    if context_bins:
        shapes[CONTEXT_KEY] = [context_bins, height, width]
    return shapes


def context_of(index: Optional[dict]) -> Optional[dict]:
    """A split's ``{"ms", "bins"}`` context settings, or None for a split without context."""
    ctx = (index or {}).get("context")
    return {"ms": float(ctx["ms"]), "bins": int(ctx["bins"])} if ctx else None


def array_keys(shapes: Optional[dict], sample: dict) -> tuple[str, ...]:
    """The array members a sample is decoded from: ``context.npy`` when the split's shapes name
    it (then it is required) or, without shapes, when the sample holds it."""
    has = CONTEXT_KEY in shapes if shapes is not None else CONTEXT_KEY in sample
    return ARRAY_KEYS + ((CONTEXT_KEY,) if has else ())


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` serialised as a ``.npy`` file."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-z]\d+)', 'fortran_order': False, "
                         rb"'shape': \(([\d, ]*)\), \}")


def npy_load(b: bytes) -> np.ndarray:
    """A ``.npy`` payload as an array (pickles refused).

    The common case (version 1.0, C order, plain dtype) is parsed with a regular expression:
    numpy's own header parser (``ast.literal_eval``) costs more than the rest of the decoding.
    """
    if b[:8] == b"\x93NUMPY\x01\x00":
        hlen = int.from_bytes(b[8:10], "little")
        m = _NPY_HEADER.match(b, 10, 10 + hlen)
        if m is not None:
            shape = tuple(int(v) for v in m.group(2).split(b",") if v.strip())
            dtype = np.dtype(m.group(1).decode())
            count = int(np.prod(shape)) if shape else 1
            if len(b) - 10 - hlen != count * dtype.itemsize:
                raise ValueError(f"payload holds {len(b) - 10 - hlen} bytes, header says "
                                 f"{count * dtype.itemsize}")
            return np.frombuffer(b, dtype=dtype, count=count, offset=10 + hlen).reshape(shape)
    return np.load(io.BytesIO(b), allow_pickle=False)


def make_sample(key: str, events: np.ndarray, depth: np.ndarray, mask: Optional[np.ndarray],
                meta: dict, context: Optional[np.ndarray] = None) -> dict[str, Any]:
    """A sample dict of encoded bytes ready for ``webdataset.TarWriter``; depth NaN/inf -> invalid.
    ``context``: the voxel grid of the events before the window (``context.npy``)."""
    if "." in key:
        raise DataError(f"sample key {key!r} contains a dot (webdataset splits keys at dots)")
    depth = np.asarray(depth, dtype=np.float32).reshape(1, *np.shape(depth)[-2:])
    finite = np.isfinite(depth) & (depth > 0)
    valid = finite if mask is None else finite & (np.asarray(mask).reshape(depth.shape) > 0)
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    ev = check_events(key, events, meta)
    sample = {"__key__": key, "events.npy": npy_bytes(ev), "depth.npy": npy_bytes(depth),
              "mask.npy": npy_bytes(valid.astype(np.uint8)),
              "meta.json": json.dumps(meta, sort_keys=True).encode()}
    if context is not None:
        sample[CONTEXT_KEY] = npy_bytes(check_events(key, context, meta, "context"))
    return sample


def check_events(key: str, events: np.ndarray, meta: dict, what: str = "events") -> np.ndarray:
    """The voxel grid as float16; refuses NaN or infinite values and values float16 cannot hold
    (they would be stored as infinity), naming the sample and its source file."""
    ev = np.asarray(events)
    where = meta.get("file") or meta.get("sequence") or meta.get("source") or ""
    label = f"sample {key!r}" + (f" ({where})" if where else "")
    bad = ~np.isfinite(ev) if ev.dtype.kind == "f" else np.zeros(ev.shape, bool)
    if bad.any():
        raise DataError(f"{label}: {what} hold {int(bad.sum())} NaN or infinite values")
    peak = float(np.abs(ev).max()) if ev.size else 0.0
    if peak > F16_MAX:
        raise DataError(f"{label}: {what} reach {peak:g}, beyond float16's {F16_MAX:g}; scale them "
                        "down (the voxel grid is stored as float16)")
    return ev.astype(np.float16)


def all_finite(a: np.ndarray) -> bool:
    """True when no element is NaN or infinite.

    float16 is tested on its bits: NaN and infinity are exactly the values whose exponent bits are
    all set (magnitude bits >= 0x7C00), which an integer max finds 5x faster than ``isfinite``.
    """
    if a.dtype == np.float16:
        return a.size == 0 or int((a.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(a).all())


def decode_sample(sample: dict[str, Any], shapes: Optional[dict] = None,
                  check_finite: bool = True) -> dict[str, Any]:
    """Decode a raw tar sample into arrays; raises ``DataError('<key>.npy: reason')``."""
    out: dict[str, Any] = {"key": sample.get("__key__", "?")}
    keys = array_keys(shapes, sample)
    for name in keys + ("meta.json",):
        if name not in sample:
            raise DataError(f"{name} missing" + (" (temporal context is expected here: every "
                                                 "sample of a split packed with --context-ms "
                                                 "carries it)" if name == CONTEXT_KEY else ""))
    for name in keys:
        try:
            a = npy_load(sample[name])
        except Exception as e:  # a corrupt payload: report which member and why
            raise DataError(f"{name} does not decode: {e}") from e
        want = DTYPES.get(name, CONTEXT_DTYPE)
        if str(a.dtype) != want:
            raise DataError(f"{name} has dtype {a.dtype}, expected {want}")
        if shapes is not None and list(a.shape) != list(shapes[name]):
            raise DataError(f"{name} has shape {list(a.shape)}, expected {list(shapes[name])}")
        if check_finite and a.dtype.kind == "f" and not all_finite(a):
            raise DataError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite values")
        out[name.split(".")[0]] = a
    check_labels(out["depth"], out["mask"])
    try:
        out["meta"] = json.loads(sample["meta.json"])
    except ValueError as e:
        raise DataError(f"meta.json does not parse: {e}") from e
    if not isinstance(out["meta"], dict):
        raise DataError(f"meta.json holds a {type(out['meta']).__name__}, not an object")
    return out


def check_labels(depth: np.ndarray, mask: np.ndarray) -> None:
    """Mask values are 0 or 1, and depth where the mask is 1 is finite and positive."""
    if mask.size and int(mask.max()) > 1:
        others = np.unique(mask[mask > 1])
        raise DataError(f"mask.npy holds values other than 0 and 1 ({others[:5].tolist()})")
    if depth.shape != mask.shape:
        return  # reported by the shape check against the split's shapes
    d = depth[mask > 0]
    bad = ~((d > 0) & np.isfinite(d))
    if bad.any():
        raise DataError(f"depth.npy: {int(bad.sum())} pixels with mask 1 have depth that is not "
                        f"finite and > 0 (e.g. {float(d[bad][0])})")


class DepthStats:
    """Running statistics of valid depth: exact min/max/mean, histogram percentiles."""

    LOG_LO, LOG_HI, NBINS = -3.0, 5.0, 8000  # log10 metres: 1 mm .. 100 km, 0.23 % per bin

    def __init__(self) -> None:
        self.hist = np.zeros(self.NBINS, dtype=np.int64)
        self.n = 0
        self.total = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, depth: np.ndarray, mask: np.ndarray) -> None:
        """Add one depth map and its validity mask."""
        v = depth[mask > 0].astype(np.float64)
        self.total += depth.size
        if v.size == 0:
            return
        self.n += v.size
        self.sum += float(v.sum())
        self.min, self.max = min(self.min, float(v.min())), max(self.max, float(v.max()))
        idx = ((np.log10(v) - self.LOG_LO) / (self.LOG_HI - self.LOG_LO) * self.NBINS).astype(np.int64)
        self.hist += np.bincount(np.clip(idx, 0, self.NBINS - 1), minlength=self.NBINS)

    def merge(self, other: "DepthStats") -> None:
        """Fold another accumulator into this one."""
        self.hist += other.hist
        self.n += other.n
        self.total += other.total
        self.sum += other.sum
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of valid depth, from the histogram bin centres."""
        cdf = np.cumsum(self.hist)
        i = int(np.searchsorted(cdf, q / 100.0 * self.n))
        centre = self.LOG_LO + (min(i, self.NBINS - 1) + 0.5) * (self.LOG_HI - self.LOG_LO) / self.NBINS
        return float(np.clip(10.0 ** centre, self.min, self.max))

    def to_dict(self) -> dict[str, float]:
        """The summary stored in ``index.json`` (zeros when no pixel is valid)."""
        if self.n == 0:
            return {"min": 0.0, "max": 0.0, "mean": 0.0, "p2": 0.0, "p98": 0.0, "valid_fraction": 0.0}
        return {"min": self.min, "max": self.max, "mean": self.sum / self.n,
                "p2": self.percentile(2), "p98": self.percentile(98),
                "valid_fraction": self.n / max(self.total, 1)}

    def state(self) -> dict:
        """A JSON-able state, for passing between processes and resuming."""
        return {"hist": self.hist.tolist(), "n": self.n, "total": self.total, "sum": self.sum,
                "min": self.min if self.n else None, "max": self.max if self.n else None}

    @classmethod
    def from_state(cls, d: dict) -> "DepthStats":
        s = cls()
        s.hist = np.asarray(d["hist"], dtype=np.int64)
        s.n, s.total, s.sum = int(d["n"]), int(d["total"]), float(d["sum"])
        if s.n:
            s.min, s.max = float(d["min"]), float(d["max"])
        return s


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_index(split_dir: str | os.PathLike) -> dict:
    """The ``index.json`` of a split directory, checked; raises ``DataError`` saying what is wrong."""
    split_dir = Path(split_dir)
    path = split_dir / INDEX_NAME
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such split directory")
    if not path.exists():
        tars = sorted(p.name for p in split_dir.glob("*.tar"))
        hint = (f" ({len(tars)} tar files present: an interrupted write? rerun with --resume)"
                if tars else "")
        raise DataError(f"{path}: missing{hint}")
    try:
        index = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    problem = index_problem(index)
    if problem:
        raise DataError(f"{path}: {problem} (restore the file or repack the split)")
    if index["version"] > FORMAT_VERSION:
        raise DataError(f"{path}: format version {index['version']} is newer than this "
                        f"resdepth reads ({FORMAT_VERSION})")
    return index


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def index_problem(index: Any) -> Optional[str]:
    """What makes a parsed ``index.json`` unusable (wrong types, missing keys), or None."""
    if not isinstance(index, dict):
        return f"holds a JSON {type(index).__name__}, not an object"
    missing = [k for k in INDEX_REQUIRED if k not in index]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key in ("version", "num_samples", "bins"):
        if not _is_int(index[key]) or index[key] < 0:
            return f"{key} is {index[key]!r}, not a non-negative integer"
    if not isinstance(index["shards"], list):
        return f"shards is a {type(index['shards']).__name__}, not a list"
    for i, s in enumerate(index["shards"]):
        if not isinstance(s, dict):
            return f"shards[{i}] is {s!r}, not an object"
        lack = [k for k in ("name", "nsamples") if k not in s]
        if lack:
            return f"shards[{i}] lacks {', '.join(lack)}"
        if not isinstance(s["name"], str) or not _is_int(s["nsamples"]) or s["nsamples"] < 0:
            return f"shards[{i}] has name {s['name']!r} and nsamples {s['nsamples']!r}"
    shapes = index["shapes"]
    if not isinstance(shapes, dict):
        return f"shapes is {shapes!r}, not an object"
    for key, rank in zip(ARRAY_KEYS, (3, 3, 3)):
        shape = shapes.get(key)
        if not (isinstance(shape, list) and len(shape) == rank
                and all(_is_int(v) and v > 0 for v in shape)):
            return f"shapes[{key!r}] is {shape!r}, not a list of {rank} positive integers"
    return context_problem(index)


def context_problem(index: dict) -> Optional[str]:
    """What makes ``index.json``'s ``context`` disagree with its ``shapes``, or None."""
    ctx, shape = index.get("context"), index["shapes"].get(CONTEXT_KEY)
    if ctx is None:
        return None if shape is None else f"shapes has {CONTEXT_KEY} but there is no context"
    if not (isinstance(ctx, dict) and _is_int(ctx.get("bins")) and ctx["bins"] > 0
            and isinstance(ctx.get("ms"), (int, float)) and ctx["ms"] > 0):
        return f"context is {ctx!r}, not {{\"ms\": > 0, \"bins\": a positive integer}}"
    want = [ctx["bins"], *index["shapes"]["events.npy"][1:]]
    if shape != want:
        return f"shapes[{CONTEXT_KEY!r}] is {shape!r}, the context says {want}"
    return None


def sample_shapes(d: dict) -> dict[str, list[int]]:
    """The member shapes of a decoded sample (``context.npy`` when it has one)."""
    return {k: list(d[k.split(".")[0]].shape) for k in ARRAY_KEYS + (CONTEXT_KEY,)
            if k.split(".")[0] in d}


def shard_paths(split_dir: str | os.PathLike, index: Optional[dict] = None) -> list[str]:
    """The shard paths of a split directory, in index order."""
    index = read_index(split_dir) if index is None else index
    return [str(Path(split_dir) / s["name"]) for s in index["shards"]]


def shard_label(url: str) -> str:
    """The shard's file name, for messages and index look-ups (in a ``pipe:`` command, the last
    word naming a tar file: ``pipe:aws s3 cp s3://b/train-000001.tar -`` -> ``train-000001.tar``)."""
    names = [w.rstrip("/").split("/")[-1] for w in url.removeprefix("pipe:").split()]
    tars = [n for n in names if n.endswith((".tar", ".tgz", ".tar.gz"))]
    return tars[-1] if tars else (names[-1] if names else url)


def iter_shard(url: str, label: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__`` plus member bytes) of one tar shard, streamed (``pipe:`` works).

    A shard that cannot be opened or read to its end raises ``DataError('<label>: reason')``
    (``label``: the shard's file name unless given).
    """
    import webdataset as wds

    try:
        yield from wds.tariterators.tarfile_samples([{"url": url}])
    except (OSError, tarfile.TarError, ValueError, EOFError) as e:
        reason = str(e.args[0]) if e.args else type(e).__name__
        raise DataError(f"{label or shard_label(url)}: unreadable tar "
                        f"({reason.split(' @ ')[0]})") from e


def stale_count(label: str, read: int, count: int) -> Optional[str]:
    """What is wrong when a shard holds ``read`` samples (``read > count``: at least that many)
    and its ``index.json`` counts ``count``; None when they agree. Reading less or more than the
    index says would leave samples out or count some twice."""
    if read > count:
        return (f"{label}: holds more samples than the {count} index.json counts (a stale "
                "index.json? `resdepth-shards stats SPLIT` recounts)")
    if read < count:
        return f"{label}: holds {read} samples, index.json counts {count}"
    return None


def iter_shard_range(url: str, start: int = 0, stop: Optional[int] = None,
                     count: Optional[int] = None, label: Optional[str] = None
                     ) -> Iterator[dict[str, Any]]:
    """Raw samples ``[start, stop)`` of one shard (``stop`` None: to its end), in shard order.

    ``count`` is the shard's sample count in ``index.json``: reading up to it, the shard must end
    there, and reading to its end, it must hold that many; a disagreement raises ``DataError``.
    """
    label = label or shard_label(url)
    it = iter_shard(url, label)
    i = 0
    try:
        for raw in it:
            if stop is not None and i >= stop:
                if stop == count:
                    raise DataError(stale_count(label, i + 1, count))
                return
            if i >= start:
                yield raw
            i += 1
    finally:
        it.close()  # also when the caller stops early: no open file left to the garbage collector
    if count is not None and (stop is None or stop == count) and i != count:
        raise DataError(stale_count(label, i, count))
