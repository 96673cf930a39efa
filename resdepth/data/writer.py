"""Writing a split directory: shards in parallel, each atomically, ``index.json`` last.

Shard ``i`` holds samples ``[i * per_shard, (i + 1) * per_shard)`` of the source, so any worker can
write any shard and an interrupted run resumes by writing only the missing ones. A shard is
written to ``.shard-XXXXXX.tar.tmp``, fsynced, its record (size, sha256, depth statistics) saved
under ``.parts/``, then renamed into place; ``index.json`` is written after every shard exists.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import webdataset as wds

from resdepth.data import format as fmt
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

PARTS = ".parts"


def write_shard(out_dir: Path, i: int, source: Any, start: int, stop: int) -> dict:
    """Write shard ``i`` from ``source.samples(start, stop)``; returns its record."""
    name = fmt.shard_name(i)
    tmp = out_dir / f".{name}.tmp"
    stats = fmt.DepthStats()
    shapes: Optional[dict] = None
    keys: dict[str, str] = {}
    n = 0
    try:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False, mtime=0.0)
            try:
                for key, events, depth, mask, meta, *context in source.samples(start, stop):
                    check_frame_size(key, events, depth, meta)
                    where = str(meta.get("file") or meta.get("sequence") or "")
                    if key in keys:
                        raise fmt.DataError(duplicate_key_message(key, f"{name} ({keys[key]})",
                                                                  f"{name} ({where})"))
                    keys[key] = where
                    shapes = _add(writer, stats, shapes, name, key, events, depth, mask, meta,
                                  context[0] if context else None)
                    n += 1
            finally:  # also on an error: a tar stream left open writes to a closed file at exit
                writer.close()
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a shard that holds part of the samples
        raise
    record = {"name": name, "nsamples": n, "bytes": tmp.stat().st_size, "sha256": fmt.sha256_file(tmp)}
    fmt.write_json_atomic(out_dir / PARTS / f"{name}.json",
                          {"record": record, "shapes": shapes, "stats": stats.state(),
                           "keys": list(keys)})
    os.replace(tmp, out_dir / name)
    return record


def duplicate_key_message(key: str, first: str, second: str) -> str:
    """Why two source samples cannot share a key (keys name samples in training and evaluation)."""
    return (f"sample key {key!r} twice: in {first} and in {second} (file names that differ only in "
            "characters other than letters, digits, '-' and '_' map to one key, e.g. 'scene.1' "
            "and 'scene_1'); rename one")


def check_frame_size(key: str, events: Any, depth: Any, meta: dict) -> None:
    """Refuse a sample whose events and depth differ in height x width."""
    if tuple(events.shape[-2:]) != tuple(depth.shape[-2:]):
        where = f"sequence {meta['sequence']!r}, " if meta.get("sequence") else ""
        raise fmt.DataError(f"sample {key!r} ({where}{meta.get('file', meta.get('source', ''))}): "
                            f"events are {events.shape[-2]}x{events.shape[-1]} (H x W) but depth is "
                            f"{depth.shape[-2]}x{depth.shape[-1]}; they must match")


def _add(writer: Any, stats: fmt.DepthStats, shapes: Optional[dict], name: str, key: str,
         events: Any, depth: Any, mask: Any, meta: dict, context: Any = None) -> dict:
    """Write one sample; returns the split's shapes (those of the first sample)."""
    sample = fmt.make_sample(key, events, depth, mask, meta, context)
    arrays = {k: fmt.npy_load(sample[k]) for k in ("depth.npy", "mask.npy")}
    got = {"events.npy": list(events.shape), "depth.npy": list(arrays["depth.npy"].shape),
           "mask.npy": list(arrays["mask.npy"].shape)}
    if context is not None:
        got[fmt.CONTEXT_KEY] = list(context.shape)
    if shapes is not None and got != shapes:
        raise fmt.DataError(f"{name}: sample {key!r} has shapes {got}, earlier samples {shapes}")
    stats.add(arrays["depth.npy"], arrays["mask.npy"])
    writer.write(sample)
    return got


def _complete(out_dir: Path, i: int, expected: int) -> bool:
    """Whether shard ``i`` is in place with its record; a shard without one (its record was
    removed) gets the record rebuilt from its contents when it reads back completely."""
    name = fmt.shard_name(i)
    if not (out_dir / name).exists():
        return False
    if (out_dir / PARTS / f"{name}.json").exists():
        return True
    stats, shapes, n, keys = fmt.DepthStats(), None, 0, []
    try:
        for raw in fmt.iter_shard(str(out_dir / name)):
            d = fmt.decode_sample(raw)
            keys.append(d["key"])
            stats.add(d["depth"], d["mask"])
            shapes = fmt.sample_shapes(d)
            n += 1
    except fmt.DataError as e:
        log.warning("%s: rewriting (%s)", name, e)
        return False
    if n != expected:
        return False
    path = out_dir / name
    record = {"name": name, "nsamples": n, "bytes": path.stat().st_size, "sha256": fmt.sha256_file(path)}
    fmt.write_json_atomic(out_dir / PARTS / f"{name}.json",
                          {"record": record, "shapes": shapes, "stats": stats.state(), "keys": keys})
    return True


def _job(args: tuple) -> dict:
    return write_shard(*args)


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def param_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every (dotted) parameter that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in param_changes(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def refuse_other_params(out_dir: Path, old: dict, params: dict, what: str) -> None:
    """--resume continues a run only with the parameters that started it."""
    changes = param_changes(old, json.loads(json.dumps(params)))
    if changes:
        raise fmt.DataError(f"{out_dir}: --resume with other parameters than {what} "
                            f"({'; '.join(changes)}); use another --out, or the same parameters")


def prepare(out_dir: Path, params: dict, resume: bool) -> None:
    """Create the split directory, or check that a resumed run has the same parameters."""
    if out_dir.exists() and not out_dir.is_dir():
        raise fmt.DataError(f"{out_dir}: a file, not a directory; --out names the split directory "
                            "to write")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PARTS).mkdir(exist_ok=True)
    pfile = out_dir / PARTS / "params.json"
    existing = sorted(p.name for p in out_dir.glob("shard-*.tar"))
    if (out_dir / fmt.INDEX_NAME).exists() and not resume:
        raise fmt.DataError(f"{out_dir}: already holds a complete split (index.json); choose "
                            "another --out or delete it")
    if existing and not resume:
        raise fmt.DataError(f"{out_dir}: holds {len(existing)} shards of an unfinished run; "
                            "pass --resume to continue it or delete the directory")
    if resume and pfile.exists():
        refuse_other_params(out_dir, json.loads(pfile.read_text()), params, "the interrupted run")
    for tmp in out_dir.glob(".shard-*.tmp"):
        tmp.unlink()  # a shard that was being written when the run stopped
    fmt.write_json_atomic(pfile, params)


def write_split(out_dir: str | os.PathLike, source: Any, per_shard: int, params: dict,
                workers: int = 1, resume: bool = False,
                progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write every shard of ``source`` into ``out_dir`` and then ``index.json``; returns the index.

    ``progress(done, total)`` is called after each shard. With ``resume``, complete shards stay.
    """
    out_dir = Path(out_dir)
    if per_shard < 1:
        raise UserError(f"per_shard must be >= 1, got {per_shard}")
    n = len(source)
    params = {**params, "samples": n}
    if resume and (out_dir / fmt.INDEX_NAME).exists():
        index = fmt.read_index(out_dir)
        refuse_other_params(out_dir, {**index.get("params", {}), "samples": index["num_samples"]},
                            params, "the complete split there")
        log.info("%s is complete already", out_dir)
        return index
    prepare(out_dir, params, resume)
    nshards = max(1, math.ceil(n / per_shard))
    done = [i for i in range(nshards) if _complete(out_dir, i, min(n, (i + 1) * per_shard) - i * per_shard)]
    todo = [i for i in range(nshards) if i not in set(done)]
    if done:
        log.info("%s: keeping %d complete shards, writing %d", out_dir, len(done), len(todo))
    jobs = [(out_dir, i, source, i * per_shard, min(n, (i + 1) * per_shard)) for i in todo]
    count = len(done)
    if progress:
        progress(count, nshards)
    if workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(_job, jobs):
                count += 1
                if progress:
                    progress(count, nshards)
    else:
        for job in jobs:
            _job(job)
            count += 1
            if progress:
                progress(count, nshards)
    index = assemble_index(out_dir, nshards, params)
    fmt.write_json_atomic(out_dir / fmt.INDEX_NAME, index)
    shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    return index


def assemble_index(out_dir: Path, nshards: int, params: dict) -> dict:
    """The index from the per-shard records."""
    records, stats, shapes = [], fmt.DepthStats(), None
    seen: dict[str, str] = {}
    for i in range(nshards):
        part = json.loads((out_dir / PARTS / f"{fmt.shard_name(i)}.json").read_text())
        records.append(part["record"])
        for key in part.get("keys", []):
            if key in seen:
                raise fmt.DataError(f"{out_dir}: " + duplicate_key_message(
                    key, seen[key], fmt.shard_name(i)))
            seen[key] = fmt.shard_name(i)
        stats.merge(fmt.DepthStats.from_state(part["stats"]))
        if part["shapes"] is not None:
            if shapes is not None and part["shapes"] != shapes:
                raise fmt.DataError(f"{out_dir}: {fmt.shard_name(i)} has shapes {part['shapes']}, "
                                    f"other shards {shapes}")
            shapes = part["shapes"]
    if shapes is None:
        raise fmt.DataError(f"{out_dir}: no samples were written")
    return make_index(records, shapes, stats, params)


def make_index(records: list[dict], shapes: dict, stats: fmt.DepthStats, params: dict) -> dict:
    """An ``index.json`` dict (see ``resdepth.data.format``)."""
    b, h, w = shapes["events.npy"]
    index = {"format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "shards": records,
             "num_samples": sum(r["nsamples"] for r in records), "shapes": shapes,
             "dtypes": dict(fmt.DTYPES), "bins": b, "height": h, "width": w,
             "depth_stats": stats.to_dict(), "sequences": params.get("sequences", []),
             "params": params}
    if fmt.CONTEXT_KEY in shapes:
        index["dtypes"][fmt.CONTEXT_KEY] = fmt.CONTEXT_DTYPE
        index["context"] = {"ms": float(params["context_ms"]), "bins": shapes[fmt.CONTEXT_KEY][0]}
    return index
