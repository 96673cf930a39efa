"""Configuration of a prediction run: which nets, which recording, how to cut it into windows, what to write."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from resdepth.config.core import ConfigError, opt
from resdepth.infer.config import INFERENCE_NON_RESULT_KEYS, InferenceSettings, inference_errors


@dataclass
class PredictConfig(InferenceSettings):
    """Depth for every window of one event recording (no ground truth needed)."""
    events: str = opt("", "Event recording: MVSEC <seq>_data.hdf5, .npz with x,y,t,p, Prophesee .raw (EVT2/EVT3), .aedat4, or what --format names.")
    format: str = opt("auto", "Reader of resdepth.data.sources (npz, mvsec, dsec, m3ed, evt, aedat4); auto: from the file name.")
    sequence: Optional[str] = opt(None, "Sequence inside a dataset directory (when --events is a directory).")
    out: str = opt("", "Output directory: depth/, std/, preview/, frames.csv, preview.mp4, parts/.")
    window_ms: float = opt(0.0, "Window length in milliseconds (consecutive windows from the first event).")
    window_events: int = opt(0, "Events per window (consecutive, non-overlapping); instead of --window-ms.")
    max_windows: int = opt(0, "Predict only the first N windows (0: all).")
    camera: str = opt("left", "Camera of a stereo recording (MVSEC, DSEC, M3ED).")
    rectify: Literal["auto", "true", "false"] = opt("auto", "Rectify events with the recording's calibration maps: auto uses them when found.")
    rectify_map: Optional[str] = opt(None, "Rectification map file: .npy float [H, W, 2] or .h5 with 'rectify_map' (DSEC); raw (x, y) -> rectified (x, y).")
    splat: Optional[Literal["round", "bilinear"]] = opt(None, "Voxel splat of rectified coordinates (default: the one the export records, else round).")
    depth_format: Literal["npy", "png"] = opt("npy", "Depth and std files: float32 .npy in metres, or uint16 .png holding metres x 256 (KITTI's encoding: 1/256 m steps up to 255.99 m; 0 = no depth).")
    previews: bool = opt(True, "Write a colour preview PNG per window (events, depth, ensemble std).")
    video: Literal["mp4", "gif", "none"] = opt("mp4", "Preview of the whole recording (mp4 through imageio-ffmpeg, else gif).")
    fps: float = opt(10.0, "Frames per second of the preview video.")


# Settings that change no number in parts/ and no depth, std or preview file (the recording is in
# the identity by its windows; the video is made again from the previews at every merge).
NON_RESULT_KEYS = INFERENCE_NON_RESULT_KEYS + ("events", "format", "sequence", "video", "fps")


def validate(cfg: PredictConfig) -> None:
    """Collect every problem of a config that parsed but cannot run."""
    errors = inference_errors(cfg)
    if not cfg.events:
        errors.append("events: required (event recording file)")
    if not cfg.out:
        errors.append("out: required (output directory)")
    elif Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        errors.append(f"out: {cfg.out} is a file; name an output directory")
    if (cfg.window_ms > 0) == (cfg.window_events > 0):
        errors.append("give exactly one of window_ms (> 0) and window_events (> 0)")
    if cfg.window_ms < 0 or cfg.window_events < 0 or cfg.max_windows < 0:
        errors.append("window_ms, window_events and max_windows must be >= 0")
    if cfg.fps <= 0:
        errors.append(f"fps: must be > 0, got {cfg.fps}")
    if errors:
        raise ConfigError("invalid prediction configuration:\n  " + "\n  ".join(errors))
