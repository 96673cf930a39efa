"""Per-unit results on disk (evaluation's and prediction's): ``parts/<unit>.json`` is written last and atomically, so its presence
means the unit (and its prediction shard and preview arrays) is complete; ``plan.json`` records the
work list that the parts belong to, and each command's ``merge`` reduces them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from resdepth.utils.atomic import replacing, write_json_atomic
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")

PLAN = "plan.json"
PARTS = "parts"


def part_path(out: Path, unit_name: str) -> Path:
    return Path(out) / PARTS / f"{unit_name}.json"


def preview_path(out: Path, unit_name: str) -> Path:
    return Path(out) / PARTS / f"{unit_name}.preview.npz"


PART_KEYS = ("hash", "num_samples", "num_valid_pixels", "sums")


def read_json(path: Path, required: tuple[str, ...], what: str) -> dict:
    """A JSON object with ``required`` keys; anything else is an error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); {what}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a JSON {type(data).__name__}, not an object; {what}")
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; {what}")
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
            raise UserError(
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
