"""Procedural scenes, analytic depth and simulated events: the dataset that ships with resdepth.

A scene is a textured ground plane, a few spheres, boxes and upright panels between 2 and 80 m,
and sometimes a far wall; everything else is sky (invalid depth). The camera moves mostly forward
and sideways at a few metres per second with a little rotation. Depth and log intensity are
ray-cast analytically (numpy, all frames and pixels at once); an ESIM-style simulator turns the
log-intensity frames into events (per-pixel reference, contrast threshold ``C`` with per-pixel
spread, refractory period, shot noise), which are voxelised over the window that ends at the
depth frame.

Depth is learnable from the events because the cues are physical: motion parallax (flow and hence
event density scale with inverse depth at a known-ish speed), textures with a fixed size in metres
(image frequency grows with depth), the ground plane below the horizon and object outlines.

Every sample is a pure function of ``(seed, split, index)``; splits draw from disjoint streams.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from resdepth.data.voxel import events_to_voxel

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the scene generator and the event simulator."""
    height: int = 64
    width: int = 64
    bins: int = 5
    focal: float = 0.8          # focal length in units of the image width
    window_s: float = 0.05      # event window that ends at the depth frame
    substeps: int = 8           # rendered frames inside the window (ESIM interpolates linearly)
    speed: tuple = (4.0, 8.0)   # forward speed range, m/s
    lateral: float = 2.0        # sideways speed range +-, m/s
    yaw_rate: float = 0.15      # rotation rate range +-, rad/s
    contrast: float = 0.2       # contrast threshold C (log intensity)
    contrast_spread: float = 0.03  # per-pixel std of C
    refractory_s: float = 0.001
    noise_rate_hz: float = 1.0  # shot-noise events per pixel per second
    max_range: float = 80.0     # depth beyond this is invalid (sensor range)
    min_objects: int = 3
    max_objects: int = 9
    # temporal context (off by default): the events of the context_ms before the window, voxelised
    # to context_bins bins and rendered at the window's frame rate
    context_ms: float = 0.0
    context_bins: int = 0
    # trajectories (off by default): consecutive windows of one scene along a path whose speed
    # changes, with slow-downs and stops; sequence_length windows per sequence
    sequence_length: int = 0
    knot_s: float = 0.15        # the speed profile is linear between knots this far apart
    stop_prob: float = 0.3      # chance that a knot is a standstill
    slow: tuple = (0.2, 1.0)    # speed of a moving knot, as a fraction of the cruise speed

    def to_dict(self) -> dict[str, Any]:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if not self.context_ms:  # a split without the new options records what it did before
            del d["context_ms"], d["context_bins"]
        if not self.sequence_length:
            for k in ("sequence_length", "knot_s", "stop_prob", "slow"):
                del d[k]
        return d

    def context(self) -> bool:
        """Whether samples carry ``context`` (the events before the window)."""
        return self.context_ms > 0 and self.context_bins > 0


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one sample: disjoint streams per (seed, split, index)."""
    return np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])


def make_scene(rng: np.random.Generator, p: SynthParams) -> dict[str, np.ndarray]:
    """Random objects and their texture parameters (world frame = camera at the depth frame)."""
    h = rng.uniform(1.2, 2.0)  # camera height above ground (y points down)
    n = int(rng.integers(p.min_objects, p.max_objects + 1))
    z = np.exp(rng.uniform(np.log(2.5), np.log(70.0), n))
    x = rng.uniform(-0.55, 0.55, n) * z
    kind = rng.integers(0, 3, n)  # 0 sphere, 1 box, 2 panel
    size = rng.uniform(0.4, 2.5, (n, 3))
    size[:, 1:] = np.minimum(size[:, 1:], 0.3 * z[:, None])  # keep every object in front of the camera
    lo = np.stack([x - size[:, 0], h - 2 * size[:, 1], z - size[:, 2]], 1)
    hi = np.stack([x + size[:, 0], np.full(n, h), z + size[:, 2]], 1)
    panel = kind == 2
    lo[panel, 2] = hi[panel, 2] = z[panel]
    has_wall = rng.random() < 0.6
    wall_z = rng.uniform(35.0, 75.0)
    # texture of ground (row 0), objects (1..n), wall (n+1), sky (n+2): two waves, fixed metres
    m = n + 3
    lam = rng.uniform(0.3, 1.2, (m, 2))
    dirs = rng.normal(size=(m, 2, 3))
    dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
    k = dirs * (2 * np.pi / lam)[..., None]
    k[-1] = 0.0
    albedo = rng.uniform(0.15, 0.9, m)
    albedo[-1] = 0.95
    return {"h": h, "kind": kind, "centre": np.stack([x, h - size[:, 1], z], 1),
            "radius": size[:, 1], "lo": lo, "hi": hi, "wall": wall_z if has_wall else np.inf,
            "k": k, "phase": rng.uniform(0, 2 * np.pi, (m, 2)), "albedo": albedo,
            "sharp": rng.uniform(1.0, 6.0, m)}


def camera_path(rng: np.random.Generator, p: SynthParams) -> tuple[np.ndarray, np.ndarray]:
    """Velocity (m/s, world) and angular rate (rad/s) of the camera."""
    v = np.array([rng.uniform(-p.lateral, p.lateral), rng.uniform(-0.2, 0.2),
                  rng.uniform(*p.speed)])
    w = np.array([rng.uniform(-0.3, 0.3) * p.yaw_rate, rng.uniform(-p.yaw_rate, p.yaw_rate), 0.0])
    return v, w


def _rotations(w: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Rodrigues rotations exp([w * tau]_x) for each time, ``[F, 3, 3]``."""
    theta = w[None, :] * taus[:, None]
    ang = np.linalg.norm(theta, axis=1)[:, None, None]
    axis = theta / np.maximum(ang[:, :, 0], 1e-12)
    kx = np.zeros((len(taus), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    kx = kx - kx.transpose(0, 2, 1)
    return np.eye(3) + np.sin(ang) * kx + (1 - np.cos(ang)) * (kx @ kx)


def render(scene: dict, origins: np.ndarray, dirs: np.ndarray, p: SynthParams) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast ``[F, P]`` rays: (distance parameter s, log intensity). s is inf for sky."""
    d = [np.ascontiguousarray(dirs[..., c]) for c in range(3)]
    o = [origins[:, c, None] for c in range(3)]
    sky_id = len(scene["albedo"]) - 1
    s = np.full(d[0].shape, np.inf)
    obj = np.full(d[0].shape, sky_id)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = [1.0 / np.where(dc == 0, 1e-12, dc) for dc in d]
        ground = (scene["h"] - o[1]) * inv[1]
        hit = (d[1] > 0) & (ground > 0)
        s, obj = np.where(hit, ground, s), np.where(hit, 0, obj)
        wall = (scene["wall"] - o[2]) * inv[2]
        upd = (wall > 0) & (wall < s)
        s, obj = np.where(upd, wall, s), np.where(upd, sky_id - 1, obj)
        for i, kind in enumerate(scene["kind"]):
            si = _hit_sphere(scene, i, o, d) if kind == 0 else _hit_box(scene, i, o, inv)
            upd = si < s
            s, obj = np.where(upd, si, s), np.where(upd, i + 1, obj)
    sky = ~np.isfinite(s)
    s_fin = np.where(sky, 1e3, s)
    P = [o[c] + s_fin * d[c] for c in range(3)]
    k = scene["k"]
    waves = [sum(k[:, w, c][obj] * P[c] for c in range(3)) + scene["phase"][:, w][obj]
             for w in range(2)]
    tex = (0.5 + 0.5 * np.tanh(scene["sharp"][obj] * np.sin(waves[0]))) * (0.6 + 0.4 * np.sin(waves[1]))
    intensity = scene["albedo"][obj] * (0.25 + 0.75 * tex)
    intensity = np.where(sky, 0.9 - 0.3 * d[1], intensity)
    return s, np.log(intensity + 0.02)


def _hit_sphere(scene: dict, i: int, o: list, d: list) -> np.ndarray:
    oc = [o[c] - scene["centre"][i, c] for c in range(3)]
    b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    c = oc[0] ** 2 + oc[1] ** 2 + oc[2] ** 2 - scene["radius"][i] ** 2
    disc = b * b - a * c
    s = (-b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc > 0) & (s > 1e-3), s, np.inf)


def _hit_box(scene: dict, i: int, o: list, inv: list) -> np.ndarray:
    """Slab test; a panel is a box of zero thickness in z."""
    tmin, tmax = -np.inf, np.inf
    for c in range(3):
        a = (scene["lo"][i, c] - o[c]) * inv[c]
        b = (scene["hi"][i, c] - o[c]) * inv[c]
        tmin = np.maximum(tmin, np.minimum(a, b))
        tmax = np.minimum(tmax, np.maximum(a, b))
    return np.where((tmax >= tmin) & (tmin > 1e-3), tmin, np.inf)


def simulate_events(logs: np.ndarray, times: np.ndarray, rng: np.random.Generator,
                    p: SynthParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ESIM between consecutive log-intensity frames ``[F, P]``: (pixel, t, polarity) arrays."""
    npix = logs.shape[1]
    C = np.clip(rng.normal(p.contrast, p.contrast_spread, npix), 0.05, None)
    ref = logs[0] + rng.uniform(-0.5, 0.5, npix) * C  # mid-way between events at the start
    dt = times[1] - times[0]
    cap = max(1, int(dt / p.refractory_s))
    out_pix, out_t, out_p = [], [], []
    for k in range(1, len(times)):
        prev, cur = logs[k - 1], logs[k]
        delta = cur - ref
        n = np.minimum(np.floor(np.abs(delta) / C).astype(np.int64), cap)
        idx = np.flatnonzero(n)
        if idx.size:
            reps = n[idx]
            pix = np.repeat(idx, reps)
            j = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps) + 1
            sign = np.sign(delta[pix])
            level = ref[pix] + sign * j * C[pix]
            change = cur[pix] - prev[pix]
            frac = np.clip((level - prev[pix]) / np.where(change == 0, 1e-9, change), 0.0, 1.0)
            out_pix.append(pix)
            out_t.append(times[k - 1] + frac * dt)
            out_p.append(sign)
            ref[idx] += np.sign(delta[idx]) * n[idx] * C[idx]
    noise = rng.poisson(p.noise_rate_hz * (times[-1] - times[0]), npix)
    if noise.any():
        pix = np.repeat(np.arange(npix), noise)
        out_pix.append(pix)
        out_t.append(rng.uniform(times[0], times[-1], pix.size))
        out_p.append(rng.choice([-1.0, 1.0], pix.size))
    if not out_pix:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return np.concatenate(out_pix), np.concatenate(out_t), np.concatenate(out_p)


def synth_sample(seed: int, split: str, index: int, p: SynthParams = SynthParams()) -> dict[str, Any]:
    """One sample: ``events`` float32 [B,H,W], ``depth`` float32 [1,H,W] (0 invalid), ``mask``,
    ``meta``, and with ``p.context()`` ``context`` float32 [N,H,W] (the events before the window)."""
    raw = synth_events(seed, split, index, p)
    pix, t, pol = raw["pix"], raw["t"], raw["pol"]
    t0, t1 = raw["t_start"], raw["t_end"]
    meta = {"source": "synthetic", "index": int(index), **raw["meta"],
            "intrinsics": raw["intrinsics"]}
    out = {"depth": raw["depth"], "mask": raw["mask"], "meta": meta}
    if not p.context():
        out["events"] = events_to_voxel(pix % p.width, pix // p.width, t, pol, p.bins, p.height,
                                        p.width, t0=t0, t1=t1)
        meta["num_events"] = int(pix.size)
        return out
    now, before = t >= t0, t < t0  # an event at t0 belongs to the window, as in a recording
    out["events"] = events_to_voxel(pix[now] % p.width, pix[now] // p.width, t[now], pol[now],
                                    p.bins, p.height, p.width, t0=t0, t1=t1)
    c0 = t0 - p.context_ms * 1e-3
    out["context"] = events_to_voxel(pix[before] % p.width, pix[before] // p.width, t[before],
                                     pol[before], p.context_bins, p.height, p.width, t0=c0, t1=t0)
    meta["num_events"] = int(now.sum())
    meta["context"] = {"t_start": c0, "num_events": int(before.sum())}
    return out


def synth_events(seed: int, split: str, index: int, p: SynthParams = SynthParams()) -> dict[str, Any]:
    """The raw simulated events of one sample (``pix`` = y * width + x, ``t`` seconds, ``pol``)
    over its window and, with ``p.context()``, the context before it; plus depth, mask and meta.
    ``synth_sample`` voxelises these; tests voxelise them independently."""
    if p.sequence_length:
        return _trajectory_events(seed, split, index, p)
    rng = sample_rng(seed, split, index)
    scene = make_scene(rng, p)
    v, w = camera_path(rng, p)
    ctx, n = rendered_span(p)
    taus = np.linspace(-p.window_s - ctx, 0.0, n + 1)
    out = _render_events(scene, v[None, :] * taus[:, None], _rotations(w, taus), taus, rng, p)
    out["meta"] = {"sequence": f"{split}-seed{seed}", "t_start": -p.window_s if ctx else float(taus[0]),
                   "t_end": 0.0, "velocity": v.round(4).tolist(), "angular_rate": w.round(5).tolist()}
    out["t_start"], out["t_end"] = out["meta"]["t_start"], 0.0
    return out


def rendered_span(p: SynthParams) -> tuple[float, int]:
    """The context rendered before a window (seconds, 0 without context) and the number of frame
    intervals over context and window (the window's ``substeps``, the context at the same rate)."""
    ctx = p.context_ms * 1e-3 if p.context() else 0.0
    return ctx, p.substeps + (int(round(ctx / p.window_s * p.substeps)) if ctx else 0)


def _render_events(scene: dict, origins: np.ndarray, R: np.ndarray, taus: np.ndarray,
                   rng: np.random.Generator, p: SynthParams) -> dict[str, Any]:
    """Render the frames at ``taus`` from ``origins`` with rotations ``R``, the depth of the last
    one, and simulate the events between them."""
    f = p.focal * p.width
    cx, cy = (p.width - 1) / 2, (p.height - 1) / 2
    u, vv = np.meshgrid(np.arange(p.width), np.arange(p.height))
    d_cam = np.stack([(u - cx) / f, (vv - cy) / f, np.ones_like(u, dtype=float)], -1).reshape(-1, 3)
    dirs = np.einsum("fij,pj->fpi", R, d_cam)
    s, logs = render(scene, origins, dirs, p)
    depth = s[-1].reshape(1, p.height, p.width)  # a ray's parameter is its depth (d_cam z = 1)
    valid = np.isfinite(depth) & (depth <= p.max_range)
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    pix, t, pol = simulate_events(logs, taus, rng, p)
    return {"pix": pix, "t": t, "pol": pol, "depth": depth, "mask": valid.astype(np.uint8),
            "intrinsics": {"fx": f, "fy": f, "cx": cx, "cy": cy}}


def speed_profile(rng: np.random.Generator, p: SynthParams, duration: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Knot times (seconds before the sequence's end, ascending to 0) and speed fractions:
    linear between knots, a standstill at a knot with ``p.stop_prob``, so runs of stopped knots
    are stops and low knots slow-downs."""
    n = int(np.ceil(duration / p.knot_s)) + 2
    times = -p.knot_s * np.arange(n)[::-1]
    speed = rng.uniform(*p.slow, n)
    speed[rng.random(n) < p.stop_prob] = 0.0
    return times, speed


def travelled(times: np.ndarray, speed: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Cruise-equivalent seconds travelled from the sequence's end to each ``tau`` (<= 0): the
    integral of the piecewise-linear speed profile (exact: trapezoids between knots)."""
    cum = np.concatenate([[0.0], np.cumsum(np.diff(times) * (speed[1:] + speed[:-1]) / 2)])
    cum -= cum[-1]  # 0 at the sequence's end
    k = np.clip(np.searchsorted(times, taus, side="right") - 1, 0, len(times) - 2)
    dt = taus - times[k]
    slope = (speed[k + 1] - speed[k]) / (times[k + 1] - times[k])
    return cum[k] + speed[k] * dt + slope * dt * dt / 2


def _trajectory_events(seed: int, split: str, index: int, p: SynthParams) -> dict[str, Any]:
    """Window ``frame`` of sequence ``index // p.sequence_length``: the camera moves through one
    scene (placed around its position at the sequence's end) with the speed profile of
    ``speed_profile``; the rotation follows the distance travelled, so a stopped camera is still."""
    seq, frame = divmod(int(index), p.sequence_length)
    srng = np.random.default_rng([int(seed), SPLIT_IDS[split], seq, 1])  # one scene per sequence
    scene = make_scene(srng, p)
    v, w = camera_path(srng, p)
    ctx, n = rendered_span(p)
    t1 = -(p.sequence_length - 1 - frame) * p.window_s
    knots = speed_profile(srng, p, p.sequence_length * p.window_s + ctx)
    taus = np.linspace(t1 - p.window_s - ctx, t1, n + 1)
    dist = travelled(*knots, taus)
    out = _render_events(scene, v[None, :] * dist[:, None], _rotations(w, dist), taus,
                         sample_rng(seed, split, index), p)
    base = p.sequence_length * p.window_s  # times from the sequence's start
    out["t"] = out["t"] + base
    out["t_start"], out["t_end"] = t1 - p.window_s + base, t1 + base
    speed = float(np.interp(t1, *knots) * np.linalg.norm(v))
    out["meta"] = {"sequence": f"{split}-seed{seed}-seq{seq:05d}", "frame": frame,
                   "t_start": out["t_start"], "t_end": out["t_end"], "speed": round(speed, 4),
                   "velocity": v.round(4).tolist(), "angular_rate": w.round(5).tolist()}
    return out
