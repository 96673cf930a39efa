"""``main(cfg)``: evaluate this process's share of the work list; ``merge(out)``: reduce the parts.

Flow of one process: load the exports, build the fixed work list (``work``), record it in
``plan.json``, compute or load the baseline, evaluate each unit of this worker that has no part yet
(``evaluate_unit``), wait for the other ranks, and, when every unit of every task has its part,
merge them into ``metrics.json``, ``report.md`` and ``samples.png``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.eval import parts as P
from resdepth.eval.config import EvalConfig, resolve_tasks, result_hash, validate
from resdepth.eval.predict import Nets, load_nets, make_patching, predict, residual_std, resolve_device
from resdepth.eval.progress import EvalProgress
from resdepth.eval.work import Unit, make_units, split_shards, task_units, worker_units
from resdepth.train.wandb_sink import log_evaluation
from resdepth.utils.atomic import write_json_atomic
from resdepth.utils.logging import setup_logging

log = logging.getLogger("resdepth")


@dataclass
class Context:
    """What every unit of one process needs."""
    cfg: EvalConfig
    out: Path
    nets: Nets
    patching: Any
    baseline: Optional[torch.Tensor]  # [1, H, W] metres
    plan_hash: str
    device: torch.device
    shapes: dict          # every sample's array shapes (from the nets' data shape)
    totals: dict          # shard url -> its sample count in the index (None when uncounted)
    depth_range: tuple[float, float]  # [Dmax exp(-alpha), Dmax] of the depth normalisation
    noise_std: Optional[float]  # the noise baseline's std (normalised depth); None: no noise baseline


def main(cfg: EvalConfig) -> int:
    """Evaluate this process's units; the process that completes the work list merges it. 0 when done."""
    validate(cfg)
    return run_work_list(cfg, evaluate)


def run_work_list(cfg: Any, body: Callable[[Any, Path, int, int], None]) -> int:
    """The process around a work list (evaluation's and prediction's): threads, process group,
    array task, per-task log files, then ``body(cfg, out, num_tasks, task_id)``; 0 when done."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # the collectives here are few and short, but a rank may wait for another's last unit
    env = dist.init("cpu" if cfg.device == "cpu" else "auto", timeout_s=3600.0)
    num_tasks, task_id = resolve_tasks(cfg)
    out = Path(cfg.out)
    setup_logging(out / "logs" / (f"task-{task_id:04d}" if num_tasks > 1 else ""), env.rank)
    ok = False
    try:
        body(cfg, out, num_tasks, task_id)
        ok = True
        return 0
    finally:
        if ok:
            dist.shutdown()
        elif dist.is_dist():
            torch.distributed.destroy_process_group()


def make_plan(cfg: EvalConfig, nets: Nets, units: list[Unit], index: Optional[dict],
              baseline: Optional[list], device: torch.device) -> dict:
    """The work list and the settings that every part of it must share.

    ``baseline`` names the training split of the mean-depth baseline (None: no baseline);
    ``device`` matters with a diffusion net: CPU and CUDA generators draw different noise.
    """
    counts = [u.count for u in units]
    total = None if any(c is None for c in counts) else int(sum(counts))
    # the data by content where the index has checksums, so a moved split keeps its parts
    data_id = ([s.get("sha256") or s["name"] for s in index["shards"]] if index is not None
               else cfg.data)
    identity = {"nets": nets.identity(), "data": data_id, "baseline": baseline,
                "units": [(u.name, u.count) for u in units]}
    if cfg.diffusion:
        identity["noise_device"] = device.type
    with_baseline = baseline is not None
    settings = {"ensemble": cfg.ensemble if cfg.diffusion else None, "steps": cfg.steps,
                "sampler": cfg.sampler, "patch": cfg.patch, "seed": cfg.seed,
                "protocol": cfg.protocol,
                "noise_std": residual_std(cfg, nets)}
    return {"hash": result_hash(cfg, identity), "data": cfg.data, "num_samples": total,
            "index_num_samples": None if index is None else int(index.get("num_samples", -1)),
            "max_samples": cfg.max_samples, "preview": cfg.preview,
            "diffusion": bool(cfg.diffusion), "baseline": with_baseline,
            "settings": {k: v for k, v in settings.items() if v is not None},
            "units": [u.to_dict() for u in units]}


def evaluate(cfg: EvalConfig, out: Path, num_tasks: int, task_id: int) -> None:
    from resdepth.data.format import shapes_for
    from resdepth.eval.baseline import baseline_dir, baseline_identity, load_or_compute

    device = resolve_device(cfg)
    nets = load_nets(cfg, device)
    bins, h, w = nets.data_shape
    shards, index = split_shards(cfg.data)
    if index is not None and "shapes" in index:
        found = [int(s) for s in index["shapes"]["events.npy"]]
        if found != [bins, h, w]:
            raise ValueError(f"{cfg.data} holds events of shape {found}, the nets were trained on "
                             f"{[bins, h, w]} (bins, height, width)")
    units = make_units(shards, cfg.unit_size, cfg.max_samples)
    if not units:
        raise ValueError(f"{cfg.data}: no samples to evaluate")
    train = baseline_dir(cfg)
    train_identity = baseline_identity(train) if train is not None else None
    plan = make_plan(cfg, nets, units, index, train_identity, device)
    if dist.is_main():
        (out / P.PARTS).mkdir(parents=True, exist_ok=True)
        P.write_plan(out, plan)
    dist.barrier()
    base = load_or_compute(train, train_identity, out, (h, w)) if train is not None else None
    ctx = Context(cfg, out, nets, make_patching(cfg, nets),
                  None if base is None else torch.from_numpy(base)[None].to(device), plan["hash"], device,
                  shapes_for(bins, h, w), dict(shards), depth_range(nets), residual_std(cfg, nets))

    process_units(ctx, units, num_tasks, task_id, unit_done, evaluate_unit, ("evaluate", "evaluated"),
                  "samples", "eval")
    if dist.is_main():
        missing = P.missing_units(out, plan)
        if missing:
            log.info("task %d finished; %d units of other tasks have no part yet: the last task to "
                     "finish (or `resdepth-eval merge %s`) writes metrics.json", task_id,
                     len(missing), out)
        else:
            metrics = merge(out)
            dist.print0(summary_line(metrics, out))
            if cfg.wandb:
                log_evaluation(out, metrics, cfg.diffusion or cfg.regression, cfg.wandb_project)


def depth_range(nets: Nets) -> tuple[float, float]:
    """What the nets can predict, in metres: the depth normalisation's exact range."""
    lo, hi = nets.norm.valid_range_m()
    return max(float(lo), 1e-3), float(hi) if math.isfinite(hi) else None


def process_units(ctx: Any, units: list[Unit], num_tasks: int, task_id: int,
                  done: Callable[[Any, Unit], bool], do_unit: Callable[[Any, Unit, EvalProgress], Any],
                  verbs: tuple[str, str], noun: str, label: str) -> None:
    """This process's share of a work list (evaluation's or prediction's): its units without
    outputs, each through ``do_unit`` under one progress bar; rank 0 then logs the rate."""
    world, rank = dist.world_size(), dist.rank()
    mine = worker_units(units, num_tasks, task_id, world, rank)
    todo = [u for u in mine if not done(ctx, u)]
    log.info("task %d/%d rank %d/%d: %d units of %d to %s (%d finished earlier)", task_id,
             num_tasks, rank, world, len(todo), len(mine), verbs[0], len(mine) - len(todo))
    ours = task_units(units, num_tasks, task_id, world)
    progress = EvalProgress(ctx.out, [u.to_dict() for u in ours], enabled=dist.is_main(),
                            label=label, noun=noun)
    start = time.perf_counter()
    try:
        for unit in todo:
            do_unit(ctx, unit, progress)
            log.info("unit %s done", unit.name)
            progress.update()
        if world > 1:
            # Ranks that finish early wait on the part files, not in a collective that could
            # time out while a slow rank finishes its last unit.
            progress.wait_for_others()
    finally:
        progress.close()
    dist.barrier()
    elapsed = time.perf_counter() - start
    if dist.is_main():
        new = P.done_samples(ctx.out, {"units": [u.to_dict() for u in ours]}) - progress.done_at_start
        log.info("%s %d %s in %.2f s (%.3f %s/s, %d process%s)", verbs[1], new, noun, elapsed,
                 new / max(elapsed, 1e-9), noun, world, "es" if world > 1 else "")


def unit_done(ctx: Context, unit: Unit) -> bool:
    """A unit is done when its part exists (and its prediction shard, if predictions are wanted)."""
    part = P.read_part(ctx.out, unit.name)
    if part is None:
        return False
    if part.get("hash") != ctx.plan_hash:
        raise ValueError(f"{P.part_path(ctx.out, unit.name)} was written by another evaluation")
    return not ctx.cfg.save_predictions or P.pred_path(ctx.out, unit.name).exists()


def batches(it: Iterator, size: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _add(sums: dict, name: str, new: dict) -> None:
    """Fold one batch's float64 sums into the unit's; they stay 0-dim tensors on the device (no host
    sync per batch) until ``_to_floats`` at the end of the unit."""
    from resdepth.eval.metrics import add_sums

    sums[name] = add_sums(sums[name], new) if name in sums else dict(new)


def _to_floats(sums: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The unit's sums as python floats (exact in JSON): one device-to-host copy per unit."""
    names = [(name, k) for name, d in sums.items() for k in d]
    values = [torch.as_tensor(sums[name][k], dtype=torch.float64) for name, k in names]
    host = torch.stack([v.to(values[0].device) for v in values]).cpu().tolist() if values else []
    out: dict[str, dict[str, float]] = {name: {} for name in sums}
    for (name, k), v in zip(names, host):
        out[name][k] = v
    return out


SEQ_PREFIX = "seq/"
SAVED = ("regression", "mean", "median", "std", "members")
# predictors in the order of metrics.json and the report
PREDICTORS = ("baseline", "regression", "noise_baseline", "diffusion", "diffusion_median",
              "diffusion_member")


def score_batch(ctx: Context, pred: dict[str, torch.Tensor], depth: torch.Tensor,
                mask: torch.Tensor) -> dict[str, dict]:
    """The metric sums of every predictor in ``pred`` under the configured protocol.

    Point predictors get the protocol's depth metrics, the CRPS of a point forecast (its MAE) and
    sharpness; ensembles (diffusion members, noise baseline) CRPS, spread/skill and the members'
    sharpness; ``diffusion`` scores the ensemble mean, ``diffusion_median`` the member median and
    ``diffusion_member`` the first member alone.
    """
    from resdepth.eval.metrics import depth_metric_sums, ensemble_metric_sums, sharpness_sums

    rng = {"protocol": ctx.cfg.protocol, "max_depth": ctx.depth_range[1],
           "min_depth": ctx.depth_range[0]}

    def point(x: torch.Tensor) -> dict:
        return {**depth_metric_sums(x, depth, mask, **rng),
                **ensemble_metric_sums(x[:, None], depth, mask, **rng),
                **sharpness_sums(x[:, None], depth, mask, rng["max_depth"])}

    def ensemble(x: torch.Tensor) -> dict:
        return {**ensemble_metric_sums(x, depth, mask, **rng),
                **sharpness_sums(x, depth, mask, rng["max_depth"])}

    out = {"regression": point(pred["regression"])}
    if "members" in pred:
        out["diffusion"] = {**depth_metric_sums(pred["mean"], depth, mask, **rng),
                            **ensemble(pred["members"])}
        out["diffusion_median"] = depth_metric_sums(pred["median"], depth, mask, **rng)
        out["diffusion_member"] = point(pred["members"][:, 0])
    if "noise_members" in pred:
        out["noise_baseline"] = ensemble(pred["noise_members"])
    if ctx.baseline is not None:
        out["baseline"] = point(ctx.baseline.expand_as(depth))
    return out


def score_by_sequence(ctx: Context, sums: dict, pred: dict[str, torch.Tensor], depth: torch.Tensor,
                      mask: torch.Tensor, sequences: list[Optional[str]]) -> None:
    """Score a batch once per sequence in it and fold each group's sums into the split's and into
    its sequence's (samples without a sequence: the split's only). Sums add, so the split's are
    those of the whole batch."""
    groups: dict[Optional[str], list[int]] = {}
    for i, seq in enumerate(sequences):
        groups.setdefault(seq, []).append(i)
    for seq, rows in groups.items():
        if len(rows) == len(sequences):
            part, d, m = pred, depth, mask
        else:
            idx = torch.tensor(rows, device=depth.device)
            part, d, m = {k: v[idx] for k, v in pred.items()}, depth[idx], mask[idx]
        for name, new in score_batch(ctx, part, d, m).items():
            _add(sums, name, new)
            if seq is not None:
                _add(sums, f"{SEQ_PREFIX}{seq}/{name}", new)


def evaluate_unit(ctx: Context, unit: Unit, progress: EvalProgress) -> dict:
    """Predict every sample of ``unit``, write its predictions and previews, then (last) its part."""
    from resdepth.data.voxel import apply_voxel_norm
    from resdepth.eval.reader import iter_samples, prefetch

    cfg = ctx.cfg
    samples = prefetch(iter_samples(unit.url, unit.start, unit.stop, ctx.shapes,
                                    ctx.totals.get(unit.url)), cfg.num_workers * cfg.batch)
    writer = P.PredictionShard(P.pred_path(ctx.out, unit.name)) if cfg.save_predictions else None
    sums: dict[str, dict] = {}
    previews: dict[str, list[np.ndarray]] = {}
    n, valid = 0, 0
    unit_keys: list[str] = []
    try:
        for batch in batches(samples, cfg.batch):
            keys = [s.key for s in batch]
            unit_keys += keys
            events = torch.from_numpy(np.stack([apply_voxel_norm(s.events, ctx.nets.voxel_norm)
                                                for s in batch])).to(ctx.device)
            mask_host = np.stack([s.mask for s in batch])
            # metrics run where the predictions are: only the saved arrays come back to the host
            depth = torch.from_numpy(np.stack([s.depth for s in batch])).to(ctx.device)
            mask = torch.from_numpy(mask_host).to(ctx.device)
            pred = predict(cfg, ctx.nets, events, keys, ctx.patching, ctx.noise_std)
            score_by_sequence(ctx, sums, pred, depth, mask, [s.sequence for s in batch])
            previewed = unit.offset is not None and unit.offset + n < cfg.preview
            if writer is not None or previewed:  # to the host: what is saved or previewed only
                pred = {k: v.cpu() for k, v in pred.items()
                        if k in SAVED and (k != "members" or cfg.save_members or previewed)}
            if writer is not None:
                for i, key in enumerate(keys):
                    writer.write(key, {k: v[i] for k, v in pred.items()
                                       if k != "members" or cfg.save_members})
            keep_previews(ctx, unit, n, batch, pred, previews)
            n += len(batch)
            valid += int(mask_host.sum())
            progress.update(extra=n)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if unit.count is not None and n != unit.count:
        raise ValueError(f"{unit.url}: {n} samples in [{unit.start}, {unit.stop}), the index says "
                         f"{unit.count}")
    if previews:
        P.save_npz_atomic(P.preview_path(ctx.out, unit.name),
                          {k: np.stack(v) for k, v in previews.items()})
    part = {"unit": unit.name, "hash": ctx.plan_hash, "num_samples": n,
            "num_valid_pixels": valid, "sums": _to_floats(sums), "keys": unit_keys}
    P.write_part(ctx.out, unit.name, part)
    return part


def keep_previews(ctx: Context, unit: Unit, n: int, batch: list, pred: dict,
                  previews: dict[str, list[np.ndarray]]) -> None:
    """Keep the arrays of the first ``preview`` samples of the work list (fixed for any world size)."""
    if unit.offset is None:
        return
    for i, s in enumerate(batch):
        if unit.offset + n + i >= ctx.cfg.preview:
            return
        previews.setdefault("keys", []).append(np.array(s.key))
        previews.setdefault("events", []).append(s.events.sum(axis=0))
        previews.setdefault("depth", []).append(s.depth[0])
        previews.setdefault("mask", []).append(s.mask[0])
        previews.setdefault("regression", []).append(pred["regression"][i, 0].numpy())
        if "members" in pred:
            previews.setdefault("mean", []).append(pred["mean"][i, 0].numpy())
            previews.setdefault("member", []).append(pred["members"][i, 0, 0].numpy())
            previews.setdefault("std", []).append(pred["std"][i, 0].numpy())


def merge(out_dir) -> dict:
    """Reduce every part of ``out_dir`` into ``metrics.json`` (float64 sums, work-list order), then
    write ``report.md`` and ``samples.png``. Raises ``IncompleteEvaluation`` listing what is missing."""
    from resdepth.eval.metrics import finalize
    from resdepth.eval.report import write_report

    out = Path(out_dir)
    plan = P.read_plan(out)
    total = P.reduce_parts(out, plan)
    expected = plan["num_samples"]
    if expected is not None and total["num_samples"] != expected:
        raise P.IncompleteEvaluation(f"{out}: {total['num_samples']} samples evaluated, the work "
                                     f"list has {expected}")
    idx = plan.get("index_num_samples")
    if idx is not None and idx >= 0 and not plan["max_samples"] and total["num_samples"] != idx:
        raise P.IncompleteEvaluation(f"{out}: {total['num_samples']} samples evaluated, "
                                     f"index.json counts {idx}")
    sums = total["sums"]
    metrics: dict[str, Any] = {"num_samples": total["num_samples"],
                               "num_valid_pixels": total["num_valid_pixels"]}
    for name in PREDICTORS:
        if name in sums:
            metrics[name] = finalize(sums[name])
    seqs = sorted({k[len(SEQ_PREFIX):].rsplit("/", 1)[0] for k in sums if k.startswith(SEQ_PREFIX)})
    if seqs:
        metrics["sequences"] = {q: {name: finalize(sums[f"{SEQ_PREFIX}{q}/{name}"])
                                    for name in PREDICTORS if f"{SEQ_PREFIX}{q}/{name}" in sums}
                                for q in seqs}
    metrics["settings"] = plan["settings"]
    write_json_atomic(out / "metrics.json", metrics, default=str)
    write_report(out, metrics, plan)
    log.info("merged %d parts (%d samples) into %s", len(plan["units"]), total["num_samples"],
             out / "metrics.json")
    return metrics


def summary_line(metrics: dict, out: Path) -> str:
    parts = [f"{metrics['num_samples']} samples"]
    for name in ("baseline", "regression", "noise_baseline", "diffusion"):
        if name in metrics:
            m = metrics[name]
            point = f"abs_rel {m['abs_rel']:.4f}, rmse {m['rmse']:.3f} m, " if "abs_rel" in m else ""
            parts.append(f"{name}: {point}crps {m['crps']:.4f}")
    protocol = metrics.get("settings", {}).get("protocol", "pooled")
    return f"protocol {protocol}: " + "; ".join(parts) + f" -> {out / 'metrics.json'}"
