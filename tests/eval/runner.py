"""Build tiny inputs and run ``resdepth-eval`` as users do (in-process, subprocesses, torchrun)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tests.procs import child_env, free_port, run_command, run_module  # noqa: F401 - re-exported for the tests

BINS, H, W = 3, 32, 32
TEST_SHARD_SIZES = [5, 3, 8, 1, 6, 2, 4]  # 29 samples, uneven on purpose
SEQUENCES = ("day1", "night1")  # alternating samples, so every batch mixes both
TINY_MODEL = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
FAST = ["--ensemble", "2", "--steps", "4", "--batch", "2", "--unit-size", "3", "--preview", "3",
        "--S-churn", "1.0"]


def write_split(split: Path, sizes: list[int], seed: int, bins: int = BINS, h: int = H,
                w: int = W) -> None:
    """Shards of random events and depth (some invalid pixels) plus ``index.json``."""
    import webdataset as wds

    from resdepth.data import format as fmt

    split.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shards, k = [], 0
    for i, n in enumerate(sizes):
        name = fmt.shard_name(i)
        with wds.TarWriter(str(split / name)) as writer:
            for _ in range(n):
                depth = rng.uniform(2.0, 60.0, (1, h, w)).astype(np.float32)
                depth[:, : h // 4] = 0.0  # "sky": invalid
                events = rng.normal(0, 1, (bins, h, w)) * (rng.random((bins, h, w)) < 0.2)
                writer.write(fmt.make_sample(f"{split.name}_{k:07d}", events, depth, None,
                                        {"source": "test", "sequence": SEQUENCES[k % 2], "t_start": 0.0,
                                         "t_end": 0.05}))
                k += 1
        shards.append({"name": name, "nsamples": n, "bytes": (split / name).stat().st_size})
    fmt.write_json_atomic(split / fmt.INDEX_NAME, {
        "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "shards": shards,
        "num_samples": k, "shapes": fmt.shapes_for(bins, h, w), "dtypes": dict(fmt.DTYPES),
        "bins": bins, "height": h, "width": w, "params": {"test": True}})


def make_exports(root: Path, norm: Optional[dict] = None, patching: bool = False,
                 size: tuple[int, int] = (H, W), model: Optional[dict] = None,
                 bins: int = BINS, context: Optional[dict] = None) -> dict[str, Path]:
    """Random-weight exports of both stages, as training would write them (``context``: nets
    trained with that temporal context, ``{"ms", "bins"}``)."""
    from resdepth.data.norm import DepthNorm
    from resdepth.models.build import arch_spec, build_net
    from resdepth.models.config import ModelConfig
    from resdepth.models.export import save_export

    norm = norm or DepthNorm().to_dict()
    out = {}
    for i, stage in enumerate(("regression", "diffusion")):
        torch.manual_seed(10 + i)
        cfg = ModelConfig(stage=stage, **(model or TINY_MODEL))
        cond = bins + (context["bins"] if context else 0)
        spec = arch_spec(cfg, stage, cond, list(size), patching=patching and stage == "diffusion",
                         context=context)
        net = build_net(spec)
        with torch.no_grad():  # random but not tiny outputs, so metrics differ between predictors
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        meta = {"spec": spec, "sigma_data": 0.5, "norm": norm,
                "data": {"bins": bins, "height": size[0], "width": size[1],
                         **({"context": context} if context else {})}, "step": 0}
        if stage == "diffusion":
            meta.update(residual_std=0.1, sigma_max=2.0)  # as stage 2 records them
        save_export(root / stage / "export", net, meta)
        out[stage] = root / stage
    return out


def eval_args(exports: dict, data: Path, out: Path, *extra: str, diffusion: bool = True) -> list[str]:
    args = ["--regression", str(exports["regression"]), "--data", str(data), "--out", str(out),
            "--device", "cpu", *FAST, *extra]
    if diffusion:
        args += ["--diffusion", str(exports["diffusion"])]
    return args


def run_eval(args: list[str], nproc: int = 1, env: Optional[dict] = None, check: bool = True,
             timeout: float = 600, prefix: Optional[list[str]] = None) -> subprocess.CompletedProcess:
    """``python -m resdepth.eval`` (or under ``torchrun`` with ``nproc`` processes); ``prefix``
    replaces ``-m resdepth.eval`` (e.g. the ``merge`` subcommand through another entry point)."""
    if prefix is not None:
        return run_command([sys.executable, *prefix, *args], env, check, timeout)
    return run_module("resdepth.eval", args, nproc, env, check, timeout)


def metrics(out: Path) -> dict:
    return json.loads((Path(out) / "metrics.json").read_text())


def assert_metrics_close(a: dict, b: dict, rel: float = 1e-6) -> None:
    """Same sample and pixel counts, every metric equal within ``rel`` (relative)."""
    import math

    assert a["num_samples"] == b["num_samples"]
    assert a["num_valid_pixels"] == b["num_valid_pixels"]
    for entry in ("baseline", "regression", "noise_baseline", "diffusion", "diffusion_median",
                  "diffusion_member"):
        assert (entry in a) == (entry in b), entry
        for k, v in a.get(entry, {}).items():
            w = b[entry][k]
            if v is None or w is None:  # undefined (no pixel counted): null in metrics.json
                assert v is None and w is None, (entry, k, v, w)
                continue
            assert math.isclose(v, w, rel_tol=rel, abs_tol=1e-12) or (math.isnan(v) and math.isnan(w)), \
                (entry, k, v, w)
