"""``main(cfg)``: predict depth for this process's share of a recording's windows; ``merge(out)``:
``frames.csv`` and the preview video once every window is done.

The machinery is shared with evaluation (``resdepth.infer``): the nets and the sampler call, the
fixed work units split between array tasks and ranks, the part files written last, the progress
bar and the process frame. A unit is a range of windows; its part holds the
windows' ``frames.csv`` rows. Every window has its own key, hence its own sampler seeds, so the
outputs do not depend on the number of processes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from resdepth import dist
from resdepth.data.sources import TemporalContext
from resdepth.infer import parts as P
from resdepth.infer.batching import batches, prefetch
from resdepth.infer.config import result_hash
from resdepth.infer.frame import Frame, Share, process_frame, running
from resdepth.infer.nets import Nets, frame_problem, load_nets, make_patching, resolve_device
from resdepth.infer.progress import Progress
from resdepth.infer.sampler import predict
from resdepth.infer.work import Unit, make_units
from resdepth.predict import outputs
from resdepth.predict.config import NON_RESULT_KEYS, PredictConfig, validate
from resdepth.predict.windows import Windows, open_recording
from resdepth.utils.errors import UserError

log = logging.getLogger("resdepth")


class IncompletePrediction(RuntimeError):
    """``merge`` found windows without outputs."""


@dataclass
class Context:
    """What every unit of one process needs."""
    cfg: PredictConfig
    out: Path
    nets: Nets
    patching: Any
    windows: Windows
    plan_hash: str
    device: torch.device
    depth_range: tuple[float, float]  # colour range of the previews (metres)


def main(cfg: PredictConfig) -> int:
    """Predict this process's units; the process that completes the work list merges. 0 when done."""
    validate(cfg)
    with process_frame(cfg) as frame:
        ctx, units, plan = prepare(cfg, frame.out)
        share = Share.of(units, frame)
        todo = [u for u in share.mine if not unit_done(ctx, u)]
        with running(frame.out, share, todo, ("predict", "predicted"), "windows", "predict") as progress:
            for unit in todo:
                predict_unit(ctx, unit, progress)
                progress.unit_finished(unit.name)
        finish(frame, plan, len(ctx.windows))
    return 0


def make_windows(cfg: PredictConfig, nets: Nets) -> Windows:
    """The recording's windows, voxelised as the regression export records (frames of any size:
    the nets pad to their multiple and crop back)."""
    bins, h, w = nets.data_shape
    stream = open_recording(cfg)
    splat = choose_splat(cfg, nets.regression_meta["data"])
    check_window(cfg, nets.regression_meta["data"])
    problem = frame_problem(nets, (stream.height, stream.width))
    if problem:
        raise UserError(f"{cfg.events}: {problem}")
    if (stream.height, stream.width) != (h, w):
        log.warning("%s: frames are %dx%d, the nets were trained on %dx%d (H x W); predicting at "
                    "the recording's size", cfg.events, stream.height, stream.width, h, w)
    context = TemporalContext(nets.context["ms"], nets.context["bins"]) if nets.context else None
    if context is not None:
        log.info("temporal context: the %g ms before each window in %d bins, as the nets were "
                 "trained", context.ms, context.bins)
    return Windows(stream, cfg.window_ms, cfg.window_events, bins, splat, nets.voxel_norm,
                   cfg.max_windows, context)


def choose_splat(cfg: PredictConfig, trained: dict) -> str:
    """The voxel splat of rectified events: ``--splat``, else the one the training shards were
    packed with (the export records it), else ``round``; a difference or a guess is logged."""
    recorded = trained.get("splat")
    if cfg.splat and recorded and cfg.splat != recorded:
        log.warning("--splat %s: the nets learnt from shards voxelised with splat=%s; their "
                    "predictions on %s-splatted windows may be worse", cfg.splat, recorded, cfg.splat)
    if not cfg.splat and not recorded:
        log.warning("the export does not record a splat (its training shards were synthetic, or "
                    "it was exported by an older resdepth): voxelising with round; pass --splat "
                    "bilinear if the shards were packed so")
    return cfg.splat or recorded or "round"


def check_window(cfg: PredictConfig, trained: dict) -> None:
    """Log where the windows differ from those the training shards were packed with."""
    mode = trained.get("window")
    if mode == "ms" and cfg.window_ms != trained.get("window_ms"):
        asked = f"{cfg.window_ms:g} ms" if cfg.window_ms else f"{cfg.window_events} events"
        log.warning("windows of %s: the nets learnt from %g ms windows (--window-ms %g)", asked,
                    trained["window_ms"], trained["window_ms"])
    elif mode == "count" and cfg.window_events != trained.get("events_per_sample"):
        asked = f"{cfg.window_ms:g} ms" if cfg.window_ms else f"{cfg.window_events} events"
        log.warning("windows of %s: the nets learnt from windows of %d events "
                    "(--window-events %d)", asked, trained["events_per_sample"],
                    trained["events_per_sample"])


def make_plan(cfg: PredictConfig, nets: Nets, windows: Windows, units: list[Unit],
              device: torch.device) -> dict:
    """The work list and everything its parts must share (with a diffusion net, the device too:
    CPU and CUDA generators draw different noise)."""
    identity = {"nets": nets.identity(), "windows": windows.describe(),
                "units": [(u.name, u.count) for u in units]}
    if cfg.diffusion:
        identity["noise_device"] = device.type
    return {"hash": result_hash(cfg, identity, NON_RESULT_KEYS), "events": cfg.events,
            "num_samples": len(windows), **windows.describe(), "diffusion": bool(cfg.diffusion),
            "depth_format": cfg.depth_format, "video": cfg.video, "fps": cfg.fps,
            "units": [u.to_dict() for u in units]}


def prepare(cfg: PredictConfig, out: Path) -> tuple[Context, list[Unit], dict]:
    """Nets, windows, work list and plan (written by rank 0): what this process's units need."""
    device = resolve_device(cfg)
    nets = load_nets(cfg, device)
    windows = make_windows(cfg, nets)
    if not len(windows):
        raise UserError(f"{cfg.events}: no whole window in the recording "
                         f"({len(windows.stream)} events from {windows.stream.t_start:.6f} s to "
                         f"{windows.stream.t_end:.6f} s)")
    units = make_units([(str(cfg.events), len(windows))], cfg.unit_size)
    plan = make_plan(cfg, nets, windows, units, device)
    if dist.is_main():
        (out / P.PARTS).mkdir(parents=True, exist_ok=True)
        P.write_plan(out, plan, "prediction", "other weights, recording, windows, max_windows, "
                     "depth_format, previews, sampler settings, seed, unit_size, or the device that "
                     "drew the noise")
    dist.barrier()
    frame = (windows.stream.height, windows.stream.width)  # the recording's, not the training's
    lo, hi = nets.norm.valid_range_m()
    ctx = Context(cfg, out, nets, make_patching(cfg, nets, frame), windows, plan["hash"], device,
                  (max(lo, 1e-3), hi if np.isfinite(hi) else nets.norm.max_depth))
    return ctx, units, plan


def finish(frame: Frame, plan: dict, num_windows: int) -> None:
    """Rank 0 writes frames.csv and the video when every unit has its outputs, else says who will."""
    if not dist.is_main():
        return
    if P.missing_units(frame.out, plan):
        log.info("task %d finished; other tasks' windows are still missing: the last task to "
                 "finish (or `resdepth-predict merge %s`) writes frames.csv", frame.task_id, frame.out)
    else:
        merge(frame.out)
        dist.print0(f"{num_windows} windows -> {frame.out}")


PART_KEYS = ("hash", "num_samples", "windows")


def read_part(out: Path, unit_name: str) -> Optional[dict]:
    """The unit's part (its windows' ``frames.csv`` rows), or None when it is not finished."""
    path = P.part_path(out, unit_name)
    if not path.exists():
        return None
    return P.read_json(path, PART_KEYS, "delete it and rerun the prediction to redo the unit")


def unit_done(ctx: Context, unit: Unit) -> bool:
    """A unit is done when its part exists (written after its windows' files)."""
    part = read_part(ctx.out, unit.name)
    if part is None:
        return False
    if part.get("hash") != ctx.plan_hash:
        raise UserError(f"{P.part_path(ctx.out, unit.name)} was written by another prediction")
    return True


def predict_unit(ctx: Context, unit: Unit, progress: Progress) -> dict:
    """Predict every window of ``unit``, write its files, then (last) its part."""
    cfg = ctx.cfg
    rows: list[dict] = []
    for batch in batches(prefetch(ctx.windows.iter(unit.start, unit.stop), cfg.batch), cfg.batch):
        keys = [w.key for w in batch]
        events = torch.from_numpy(np.stack([w.events for w in batch])).to(ctx.device)
        pred = {k: v.cpu() for k, v in predict(cfg, ctx.nets, events, keys, ctx.patching).items()
                if k in ("regression", "mean", "std")}  # to the host: what is written only
        depth = pred["mean"] if "mean" in pred else pred["regression"]
        for i, w in enumerate(batch):
            std = pred["std"][i, 0].numpy() if "std" in pred else None
            rows.append(outputs.write_window(ctx.out, w, depth[i, 0].numpy(), std,
                                             cfg.depth_format, cfg.previews, ctx.depth_range))
        progress.update(extra=len(rows))
    part = {"unit": unit.name, "hash": ctx.plan_hash, "num_samples": len(rows), "windows": rows}
    P.write_part(ctx.out, unit.name, part)
    return part


def merge(out_dir) -> Path:
    """``frames.csv`` (every window, in order) and the preview video; raises
    ``IncompletePrediction`` naming the units without outputs."""
    out = Path(out_dir)
    plan = P.read_plan(out)
    missing = P.missing_units(out, plan)
    if missing:
        raise IncompletePrediction(f"{out}: {len(missing)} of {len(plan['units'])} units have no "
                                   f"outputs yet: {', '.join(missing[:20])}; rerun the prediction "
                                   "to finish them")
    rows = []
    for u in plan["units"]:
        part = read_part(out, u["name"])
        if part.get("hash") != plan["hash"]:
            raise UserError(f"{P.part_path(out, u['name'])} was written by another prediction")
        rows += part["windows"]
    if len(rows) != plan["num_samples"]:
        raise IncompletePrediction(f"{out}: {len(rows)} windows in the parts, the plan has "
                                   f"{plan['num_samples']}")
    path = outputs.write_frames_csv(out, rows)
    video = outputs.write_video(out, rows, plan.get("video", "mp4"), float(plan.get("fps", 10.0)))
    log.info("%d windows listed in %s%s", len(rows), path, f"; preview {video}" if video else "")
    return path
