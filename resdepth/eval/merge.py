"""``merge(out)``: every part of an evaluation reduced into ``metrics.json``, ``report.md`` and
``samples.png``, by whichever process finishes the work list last (or ``resdepth-eval merge``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from resdepth.eval.metrics import add_sums, finalize
from resdepth.eval.report import write_report
from resdepth.eval.scoring import (GROUP_COUNT, GROUP_PREFIX, LOW_ACTIVITY_EPP, PREDICTORS,
                                   SEQ_PREFIX, spread_fit)
from resdepth.infer.parts import missing_units, part_path, read_part, read_plan
from resdepth.utils.atomic import write_json_atomic
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


class IncompleteEvaluation(RuntimeError):
    """``merge`` found fewer (or other) parts than the work list needs."""


def reduce_parts(out: Path, plan: dict) -> dict[str, Any]:
    """Sum every part in work-list order (float64, so the result is the same whoever merges)."""
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
                raise UserError(f"sample key {key!r} is in units {owner[key]} and {u['name']} "
                                 f"({u['url']}): the split holds it twice and it would count twice "
                                 "(`resdepth-shards verify` lists every duplicate)")
            owner[key] = u["name"]
        if part.get("hash") != plan["hash"]:
            raise UserError(f"{part_path(out, u['name'])} was written by another evaluation "
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


def merge(out_dir) -> dict:
    """Reduce every part of ``out_dir`` into ``metrics.json`` (float64 sums, work-list order), then
    write ``report.md`` and ``samples.png``. Raises ``IncompleteEvaluation`` listing what is missing."""
    out = Path(out_dir)
    plan = read_plan(out)
    total = reduce_parts(out, plan)
    expected = plan["num_samples"]
    if expected is not None and total["num_samples"] != expected:
        raise IncompleteEvaluation(f"{out}: {total['num_samples']} samples evaluated, the work "
                                     f"list has {expected}")
    idx = plan.get("index_num_samples")
    if idx is not None and idx >= 0 and not plan["max_samples"] and total["num_samples"] != idx:
        raise IncompleteEvaluation(f"{out}: {total['num_samples']} samples evaluated, "
                                     f"index.json counts {idx}")
    sums = total["sums"]
    metrics: dict[str, Any] = {"num_samples": total["num_samples"],
                               "num_valid_pixels": total["num_valid_pixels"]}
    for name in PREDICTORS:
        if name in sums:
            metrics[name] = finalize(sums[name])
    for key, prefix in (("sequences", SEQ_PREFIX), ("groups", GROUP_PREFIX)):
        names = sorted({k[len(prefix):].rsplit("/", 1)[0] for k in sums if k.startswith(prefix)})
        if names:
            metrics[key] = {q: {name: finalize(sums[f"{prefix}{q}/{name}"])
                                for name in PREDICTORS if f"{prefix}{q}/{name}" in sums}
                            for q in names}
    if "groups" in metrics:
        for name, rows in metrics["groups"].items():
            rows["num_samples"] = int(sums[f"{GROUP_PREFIX}{name}/{GROUP_COUNT}"]["samples"])
        metrics["groups_definition"] = GROUPS_DEFINITION
    fit = spread_fit(sums)
    if fit is not None:
        metrics["spread_calibration"] = fit
    metrics["settings"] = plan["settings"]
    write_json_atomic(out / "metrics.json", metrics, default=str)
    write_report(out, metrics, plan)
    log.info("merged %d parts (%d samples) into %s", len(plan["units"]), total["num_samples"],
             out / "metrics.json")
    return metrics


GROUPS_DEFINITION = (f"low_activity: windows with fewer than {LOW_ACTIVITY_EPP:g} events per valid "
                     "depth pixel (meta.json num_events / valid pixels); active: the others")


def summary_line(metrics: dict, out: Path) -> str:
    parts = [f"{metrics['num_samples']} samples"]
    for name in ("baseline", "regression", "noise_baseline", "diffusion"):
        if name in metrics:
            m = metrics[name]
            point = f"abs_rel {m['abs_rel']:.4f}, rmse {m['rmse']:.3f} m, " if "abs_rel" in m else ""
            parts.append(f"{name}: {point}crps {m['crps']:.4f}")
    protocol = metrics.get("settings", {}).get("protocol", "pooled")
    return f"protocol {protocol}: " + "; ".join(parts) + f" -> {out / 'metrics.json'}"
