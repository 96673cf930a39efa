"""Small recordings in the exact file layouts the datasets ship, with their ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np

MVSEC_HW = (260, 346)


def mvsec_maps(h: int = MVSEC_HW[0], w: int = MVSEC_HW[1]) -> tuple[np.ndarray, np.ndarray]:
    """Undistortion-like maps: a radial stretch, so corners land outside the frame and the
    centre stays put, with fractional positions everywhere else."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2 + 3.3, (h - 1) / 2 - 2.1
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (w / 2) ** 2
    k = 1.0 + 0.12 * r2
    return cx + (xx - cx) * k + 0.37, cy + (yy - cy) * k - 0.21


def write_mvsec(root: Path, sequence: str = "outdoor_day1", frames: int = 4,
                events_per_frame: int = 20_000, seed: int = 0, depth_hw: tuple = MVSEC_HW,
                calib: bool = True, t_base: float = 1_506_117_000.25) -> dict:
    """``<seq>_data.hdf5``, ``<seq>_gt.hdf5`` (lzf depth, NaN holes) and
    ``<scene>_calib/<scene>_left_{x,y}_map.txt`` under ``root``; returns what was written."""
    import h5py

    rng = np.random.default_rng(seed)
    h, w = MVSEC_HW
    ts = t_base + 0.05 * np.arange(frames) + rng.uniform(0, 0.004, frames)
    n = events_per_frame * (frames + 1)
    t = np.sort(rng.uniform(ts[0] - 0.03, ts[-1] + 0.03, n))
    x = rng.integers(0, w, n).astype(np.float64)
    y = rng.integers(0, h, n).astype(np.float64)
    p = rng.choice([-1.0, 1.0], n)
    events = np.stack([x, y, t, p], 1)
    depth = rng.uniform(2.0, 80.0, (frames, *depth_hw)).astype(np.float32)
    for i in range(frames):  # NaN holes: a sky band and random pixels
        depth[i, : 20 + 5 * i] = np.nan
        depth[i][rng.random(depth_hw) < 0.1] = np.nan
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / f"{sequence}_data.hdf5", "w") as f:
        f.create_dataset("davis/left/events", data=events, chunks=(min(4096, n), 4))
        f.create_dataset("davis/left/image_raw_ts", data=ts - 0.001)
    with h5py.File(root / f"{sequence}_gt.hdf5", "w") as f:
        f.create_dataset("davis/left/depth_image_rect", data=depth, compression="lzf",
                         chunks=(1, *depth_hw))
        f.create_dataset("davis/left/depth_image_rect_ts", data=ts)
        f.create_dataset("davis/left/depth_image_raw", data=depth, compression="lzf",
                         chunks=(1, *depth_hw))
    mx, my = mvsec_maps()
    scene = sequence.rstrip("0123456789")
    if calib:
        d = root / f"{scene}_calib"
        d.mkdir(exist_ok=True)
        np.savetxt(d / f"{scene}_left_x_map.txt", mx)
        np.savetxt(d / f"{scene}_left_y_map.txt", my)
    return {"events": events, "ts": ts, "depth": depth, "x_map": mx, "y_map": my}


def voxel_reference(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, bins: int,
                    h: int, w: int, t0: float, t1: float, splat: str = "round") -> np.ndarray:
    """The voxel grid in float64 written from the definition, independently of the library:
    triangular kernel in time ``max(0, 1 - |t* - b|)``, nearest pixel or bilinear in space,
    events outside the frame or the window ``[t0, t1]`` dropped."""
    grid = np.zeros((bins, h, w), np.float64)
    keep = (t >= t0) & (t <= t1)
    x, y, t, p = x[keep], y[keep], t[keep], np.where(p[keep] > 0, 1.0, -1.0)
    tn = (bins - 1) * (t - t0) / (t1 - t0)
    if splat == "round":
        corners = [(np.floor(x + 0.5), np.floor(y + 0.5), np.ones_like(x))]
    else:
        fx, fy = x - np.floor(x), y - np.floor(y)
        corners = [(np.floor(x) + dx, np.floor(y) + dy,
                    (fx if dx else 1 - fx) * (fy if dy else 1 - fy))
                   for dx in (0, 1) for dy in (0, 1)]
    for b in range(bins):
        kt = np.maximum(0.0, 1.0 - np.abs(tn - b))
        for cx, cy, kw in corners:
            ok = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            np.add.at(grid[b], (cy[ok].astype(int), cx[ok].astype(int)), (p * kt * kw)[ok])
    return grid


def float16_error_ok(got: np.ndarray, ref: np.ndarray) -> float:
    """The largest error of ``got`` in units of float16 rounding of ``ref`` (<= 1 passes):
    half a float16 step of each value (and its subnormal step near zero)."""
    bound = np.maximum(np.abs(ref) * 2.0 ** -11, 2.0 ** -25) * (1 + 1e-6)
    return float((np.abs(got.astype(np.float64) - ref) / bound).max())


DSEC_HW = (480, 640)
DSEC_T_OFFSET = 49_599_300_523  # microseconds, the magnitude real recordings have
DSEC_Q = np.array([[1.0, 0.0, 0.0, -335.0999870300293],
                   [0.0, 1.0, 0.0, -221.23667526245117],
                   [0.0, 0.0, 0.0, 569.7632987676102],
                   [0.0, 0.0, 1.6705925010574574, 0.0]])


def write_dsec(root: Path, sequence: str = "zurich_city_00_a", frames: int = 4,
               events_per_frame: int = 20_000, seed: int = 0, disp_hw: tuple = DSEC_HW) -> dict:
    """One DSEC sequence folder (Blosc events.h5, rectify_map.h5, 16-bit disparity PNGs with
    timestamps.txt, cam_to_cam.yaml) under ``root``; returns what was written."""
    import h5py
    import hdf5plugin
    import yaml
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = DSEC_HW
    seq = root / sequence
    ev_dir, disp_dir, cal_dir = seq / "events" / "left", seq / "disparity" / "event", seq / "calibration"
    for d in (ev_dir, disp_dir, cal_dir):
        d.mkdir(parents=True, exist_ok=True)
    ts_us = DSEC_T_OFFSET + 50_000 + 100_000 * np.arange(frames, dtype=np.int64) \
        + rng.integers(0, 500, frames)
    span = int(ts_us[-1] - DSEC_T_OFFSET) + 30_000
    n = events_per_frame * span // 100_000  # events_per_frame per 100 ms disparity interval
    t_rel = np.sort(rng.integers(0, span, n)).astype(np.uint32)
    x = rng.integers(0, w, n).astype(np.uint16)
    y = rng.integers(0, h, n).astype(np.uint16)
    p = rng.integers(0, 2, n).astype(np.uint8)
    ms_to_idx = np.searchsorted(t_rel, np.arange(int(t_rel[-1]) // 1000 + 1) * 1000, side="left")
    blosc = hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE)
    with h5py.File(ev_dir / "events.h5", "w") as f:
        for k, v in (("p", p), ("t", t_rel), ("x", x), ("y", y)):
            f.create_dataset(f"events/{k}", data=v, chunks=(min(16384, n),), **blosc)
        f.create_dataset("ms_to_idx", data=ms_to_idx.astype(np.uint64))
        f.create_dataset("t_offset", data=np.int64(DSEC_T_OFFSET))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = 331.7, 245.2
    k = 1.0 + 0.1 * ((xx - cx) ** 2 + (yy - cy) ** 2) / (w / 2) ** 2
    rect = np.stack([cx + (xx - cx) * k - 0.6, cy + (yy - cy) * k + 0.45], -1).astype(np.float32)
    with h5py.File(ev_dir / "rectify_map.h5", "w") as f:
        f.create_dataset("rectify_map", data=rect)
    pngs = []
    for i in range(frames):
        disp = rng.uniform(1.0, 60.0, disp_hw)
        disp[rng.random(disp_hw) < 0.3] = 0.0  # no ground truth
        disp[:5, :5] = 200.0  # stored as 51200: above int16's range
        raw = np.round(disp * 256).astype(np.uint16)
        Image.fromarray(raw).save(disp_dir / f"{2 * i:06d}.png")
        pngs.append(raw)
    np.savetxt(seq / "disparity" / "timestamps.txt", ts_us, fmt="%d")
    calib = {"intrinsics": {"camRect0": {"camera_matrix": [569.76, 569.76, 335.10, 221.24],
                                         "resolution": [w, h]},
                            "camRect3": {"camera_matrix": [569.76, 569.76, 335.10, 221.24],
                                         "resolution": [w, h]}},
             "extrinsics": {"T_10": np.eye(4).tolist(), "R_rect0": np.eye(3).tolist()},
             "disparity_to_depth": {"cams_03": DSEC_Q.tolist(), "cams_12": DSEC_Q.tolist()}}
    (cal_dir / "cam_to_cam.yaml").write_text(yaml.safe_dump(calib))
    return {"t_rel": t_rel, "x": x, "y": y, "p": p, "ts_us": ts_us, "disp_raw": pngs,
            "rectify_map": rect, "t_offset": DSEC_T_OFFSET, "q": DSEC_Q}


M3ED_HW = (720, 1280)


def write_m3ed(root: Path, sequence: str = "car_urban_day_penno_small_loop", frames: int = 3,
               events_per_frame: int = 5000, seed: int = 0) -> dict:
    """``<seq>_data.h5`` (/prophesee/left/{x,y,t,p}, calib/resolution) and ``<seq>_depth_gt.h5``
    (/depth/prophesee/left with inf holes, /ts) under ``root``."""
    import h5py

    rng = np.random.default_rng(seed)
    h, w = M3ED_HW
    ts = 1_000_000 + 100_000 * np.arange(frames, dtype=np.int64)
    n = events_per_frame * (frames + 1)
    t = np.sort(rng.integers(ts[0] - 50_000, ts[-1] + 50_000, n)).astype(np.int64)
    x, y = rng.integers(0, w, n).astype(np.uint16), rng.integers(0, h, n).astype(np.uint16)
    p = rng.integers(0, 2, n).astype(np.int8)
    depth = rng.uniform(1.0, 60.0, (frames, h, w)).astype(np.float32)
    depth[:, :100] = np.inf  # no lidar return
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / f"{sequence}_data.h5", "w") as f:
        g = f.create_group("prophesee/left")
        for k, v in (("x", x), ("y", y), ("t", t), ("p", p)):
            g.create_dataset(k, data=v, chunks=(min(8192, n),), compression="lzf")
        g.create_dataset("calib/resolution", data=np.array([w, h]))
        g.create_dataset("ms_map_idx", data=np.searchsorted(t, np.arange(0, t[-1] // 1000 + 1) * 1000))
    with h5py.File(root / f"{sequence}_depth_gt.h5", "w") as f:
        f.create_dataset("depth/prophesee/left", data=depth, chunks=(1, h, w), compression="lzf")
        f.create_dataset("ts", data=ts)
        f.create_dataset("ts_map_prophesee_left", data=np.searchsorted(t, ts))
    return {"x": x, "y": y, "t": t, "p": p, "depth": depth, "ts": ts}


def write_dense(root: Path, sequence: str = "sequence_0", frames: int = 3, bins: int = 5,
                seed: int = 0, hw: tuple = MVSEC_HW) -> dict:
    """One DENSE sequence folder: events/voxels/event_tensor_*.npy and depth/data/depth_*.npy
    with their "index time" timestamp files."""
    rng = np.random.default_rng(seed)
    seq = root / sequence
    ev_dir, d_dir = seq / "events" / "voxels", seq / "depth" / "data"
    ev_dir.mkdir(parents=True)
    d_dir.mkdir(parents=True)
    ts = 0.05 * np.arange(frames) + 0.0123
    vox = rng.normal(0, 1, (frames, bins, *hw)).astype(np.float32)
    depth = rng.uniform(2, 900, (frames, *hw)).astype(np.float32)  # CARLA sky ~1000 m
    for i in range(frames):
        np.save(ev_dir / f"event_tensor_{i:010d}.npy", vox[i])
        np.save(d_dir / f"depth_{i:010d}.npy", depth[i])
    for d in (ev_dir, d_dir):
        np.savetxt(d / "timestamps.txt", np.stack([np.arange(frames), ts], 1), fmt=["%d", "%.6f"])
    return {"voxels": vox, "depth": depth, "ts": ts}
