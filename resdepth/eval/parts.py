"""Per-unit results on disk: ``parts/<unit>.json`` is written last and atomically, so its presence
means the unit (and its prediction shard and preview arrays) is complete; ``plan.json`` records the
work list that the parts belong to, and ``merge`` reduces them into ``metrics.json``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from resdepth.utils.atomic import replacing, tmp_name, write_json_atomic

log = logging.getLogger("resdepth")

PLAN = "plan.json"
PARTS = "parts"


class IncompleteEvaluation(RuntimeError):
    """``merge`` found fewer (or other) parts than the work list needs."""


def part_path(out: Path, unit_name: str) -> Path:
    return Path(out) / PARTS / f"{unit_name}.json"


def preview_path(out: Path, unit_name: str) -> Path:
    return Path(out) / PARTS / f"{unit_name}.preview.npz"


def pred_path(out: Path, unit_name: str) -> Path:
    return Path(out) / "predictions" / f"pred-{unit_name}.tar"


PART_KEYS = ("hash", "num_samples", "num_valid_pixels", "sums")


def read_json(path: Path, required: tuple[str, ...], what: str) -> dict:
    """A JSON object with ``required`` keys; anything else is an error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {what}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not an object; {what}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}; {what}")
    return data


def read_part(out: Path, unit_name: str) -> Optional[dict]:
    """The unit's part, or None when it is not finished."""
    p = part_path(out, unit_name)
    if not p.exists():
        return None
    return read_json(p, PART_KEYS, "delete it and rerun the evaluation to redo the unit")


def write_part(out: Path, unit_name: str, part: dict) -> None:
    write_json_atomic(part_path(out, unit_name), part, default=str)


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


EVAL_SETTINGS = ("other weights, data, baseline split, sampler settings, seed, unit_size, "
                 "max_samples, or the device that drew the noise")


def write_plan(out: Path, plan: dict, what: str = "evaluation",
               settings: str = EVAL_SETTINGS) -> None:
    """Record the work list; refuse an out dir holding parts of another ``what`` (evaluation or
    prediction), listing the ``settings`` that make one."""
    path = Path(out) / PLAN
    if path.exists():
        old = read_json(path, ("hash",), "delete the output directory and rerun")
        if old.get("hash") != plan["hash"]:
            raise ValueError(
                f"{out} holds parts of another {what} (settings hash {old.get('hash')}, this one "
                f"{plan['hash']}: {settings}); use a new --out directory or delete the old one")
        if old == plan:
            return
    write_json_atomic(path, plan, default=str)


def read_plan(out: Path) -> dict:
    path = Path(out) / PLAN
    if not path.exists():
        raise FileNotFoundError(f"{out}: no {PLAN}; not an evaluation output directory")
    return read_json(path, ("hash", "units", "num_samples"), "rerun the evaluation to rewrite it")


def missing_units(out: Path, plan: dict) -> list[str]:
    return [u["name"] for u in plan["units"] if not part_path(out, u["name"]).exists()]


def done_samples(out: Path, plan: dict) -> int:
    """Samples in finished parts (what the progress bar shows; reads only small files)."""
    n = 0
    for u in plan["units"]:
        p = part_path(out, u["name"])
        if p.exists():
            n += u["stop"] - u["start"] if u["stop"] is not None else json.loads(p.read_text())["num_samples"]
    return n


def reduce_parts(out: Path, plan: dict) -> dict[str, Any]:
    """Sum every part in work-list order (float64, so the result is the same whoever merges)."""
    from resdepth.eval.metrics import add_sums

    missing = missing_units(out, plan)
    if missing:
        shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise IncompleteEvaluation(f"{out}: {len(missing)} of {len(plan['units'])} units have no "
                                   f"part yet: {shown}; rerun the evaluation to finish them")
    total: dict[str, Any] = {"num_samples": 0, "num_valid_pixels": 0, "sums": {}}
    owner: dict[str, str] = {}  # sample key -> unit, so no sample counts twice
    for u in plan["units"]:
        part = read_part(out, u["name"])
        for key in part.get("keys", []):
            if key in owner:
                raise ValueError(f"sample key {key!r} is in units {owner[key]} and {u['name']} "
                                 f"({u['url']}): the split holds it twice and it would count twice "
                                 "(`resdepth-shards verify` lists every duplicate)")
            owner[key] = u["name"]
        if part.get("hash") != plan["hash"]:
            raise ValueError(f"{part_path(out, u['name'])} was written by another evaluation "
                             f"(hash {part.get('hash')}, plan {plan['hash']})")
        expect = u["stop"] - u["start"] if u["stop"] is not None else None
        if expect is not None and part["num_samples"] != expect:
            raise IncompleteEvaluation(f"{part_path(out, u['name'])}: {part['num_samples']} samples, "
                                       f"the index says {expect}")
        total["num_samples"] += part["num_samples"]
        total["num_valid_pixels"] += part["num_valid_pixels"]
        for name, sums in part["sums"].items():
            total["sums"][name] = add_sums(total["sums"][name], sums) if name in total["sums"] else dict(sums)
    return total


class PredictionShard:
    """``pred-<unit>.tar`` written under a temporary name and renamed when complete."""

    def __init__(self, path: Path):
        import webdataset as wds

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_name(self.path)
        self.stream = open(self.tmp, "wb")
        self.writer = wds.TarWriter(self.stream)

    def write(self, key: str, arrays: dict) -> None:
        """One sample: ``<name>.npy`` float32 ``[1, H, W]`` (members ``[M, 1, H, W]``) in metres."""
        sample = {"__key__": key}
        for name, a in arrays.items():
            sample[f"{name}.npy"] = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
        self.writer.write(sample)

    def commit(self) -> None:
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
            self.stream.close()
        finally:
            self.tmp.unlink(missing_ok=True)
