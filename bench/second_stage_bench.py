"""Where the residual diffusion stage gains and loses against the regression mean, measured.

    python bench/second_stage_bench.py [--demo demo] [--max-samples 32] [--members 32]
    python bench/second_stage_bench.py --regression R --diffusion D --data SPLIT ...

Loads the two exports through ``resdepth.infer`` (the evaluator's loader), reads the first
``--max-samples`` samples of the test split with the evaluator's shard reader, draws ``--members``
members per sample with ``resdepth.diffusion.sampler.generate_ensemble`` (the evaluator's settings:
``--steps``, stochastic sampler, S_churn 10, seed 0; member ``m`` of a sample is the same draw
whatever the ensemble size, so the first ``--eval-members`` are the demo evaluation's members) and
scores with ``resdepth.eval.metrics`` (protocol pooled). Prints markdown tables:

1. error by true-depth bin for the regression, the ensemble mean, the member median and one member;
2. the ensemble mean's (and median's) error against the member count;
3. the true residual's statistics by depth bin against the sampled members' spread;
4. what the log normalisation does: metres per 0.01 of normalised depth, and the ensemble mean
   taken in normalised (geometric) vs metric (arithmetic) space.

``--denoised K ...`` prints only table 5: the regression mean plus the residual net's denoised zero
residual ``D(0; K sigma_data)`` on the first ``--max-samples`` samples.

``--bootstrap NAME=EVAL_DIR ...`` prints only how sure each evaluation's CRPS gain is: the gain
over the noise-dressed regression with the test split's sequences resampled with replacement (its
5-95 % range), and each sequence's own gain.

``--fixes NAME=EVAL_DIR ...`` prints only the table of stage-2 variants instead: each evaluation's
regression, ensemble mean and member median on the goal's metrics, the CRPS gain over the
noise-dressed regression, and which metrics beat the regression.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resdepth.data.format import iter_shard_range, npy_load, shapes_for  # noqa: E402
from resdepth.data.netinput import net_input_batch  # noqa: E402
from resdepth.diffusion.sampler import denoised_mean, ensemble_mean, generate_ensemble  # noqa: E402
from resdepth.eval.metrics import (depth_metric_sums, ensemble_metric_sums, finalize,  # noqa: E402
                                   sharpness_sums)
from resdepth.eval.samples import iter_samples  # noqa: E402
from resdepth.infer.config import InferenceSettings  # noqa: E402
from resdepth.infer.nets import load_nets, make_patching  # noqa: E402
from resdepth.infer.sampler import noise_baseline, sampler_kwargs  # noqa: E402
from resdepth.infer.work import split_shards  # noqa: E402

BINS = [(0, 5), (5, 10), (10, 20), (20, 40), (40, 80)]
COUNTS = (1, 2, 4, 8, 16, 32, 64)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="demo", help="demo directory: runs/regression, runs/diffusion, "
                                                 "shards/test (defaults of the three below)")
    p.add_argument("--regression", default=None, help="regression run or export")
    p.add_argument("--diffusion", default=None, help="diffusion run or export")
    p.add_argument("--data", default=None, help="test split directory")
    p.add_argument("--max-samples", type=int, default=32, help="first N samples of the split")
    p.add_argument("--members", type=int, default=32, help="members drawn per sample")
    p.add_argument("--eval-members", type=int, default=6,
                   help="members of the point estimates in tables 1, 3, 4 (the demo's 6)")
    p.add_argument("--steps", type=int, default=8, help="sampler steps (the demo's 8)")
    p.add_argument("--batch", type=int, default=8, help="images per sampler call")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--predictions", default=None,
                   help="an evaluation's predictions/ (--save-predictions) of the same split: "
                        "table 0 scores its saved estimates on every sample (default: "
                        "DEMO/eval/predictions when it exists; 'none' skips)")
    p.add_argument("--fixes", nargs="+", default=None, metavar="NAME=EVAL_DIR",
                   help="only print the fixes table of these evaluations (their metrics.json, "
                        "evaluated with the point estimates' own sharpness columns)")
    p.add_argument("--bootstrap", nargs="+", default=None, metavar="NAME=EVAL_DIR",
                   help="only print how sure each evaluation's CRPS gain is: its sequences "
                        "resampled with replacement")
    p.add_argument("--denoised", nargs="+", type=float, default=None, metavar="K",
                   help="only print table 5: regression + D(0; K x sigma_data) for each K")
    a = p.parse_args(argv)
    demo = Path(a.demo)
    a.regression = a.regression or str(demo / "runs" / "regression")
    a.diffusion = a.diffusion or str(demo / "runs" / "diffusion")
    a.data = a.data or str(demo / "shards" / "test")
    if a.predictions is None and (demo / "eval" / "predictions").is_dir():
        a.predictions = str(demo / "eval" / "predictions")
    return a


def load(a: argparse.Namespace):
    """Nets, then truth, mask, regression and members (normalised) of the first samples."""
    cfg = InferenceSettings(regression=a.regression, diffusion=a.diffusion, ensemble=a.members,
                            steps=a.steps, device="cpu", seed=0)
    nets = load_nets(cfg, torch.device("cpu"))
    bins, h, w = nets.data_shape
    shards, _ = split_shards(a.data)
    samples = []
    for url, total in shards:
        for s in iter_samples(url, 0, None, shapes_of(nets), total):
            samples.append(s)
            if len(samples) >= a.max_samples:
                break
        if len(samples) >= a.max_samples:
            break
    patch = make_patching(cfg, nets)
    hr = bool(nets.diffusion_meta["spec"].get("hr_mean_conditioning", False))
    regs, members = [], []
    t0 = time.time()
    for i in range(0, len(samples), a.batch):
        batch = samples[i:i + a.batch]
        events = net_input_batch([s.events for s in batch], nets.voxel_norm,
                                 [s.context for s in batch])
        out = generate_ensemble(nets.diffusion, nets.regression, events, [s.key for s in batch],
                                seed=cfg.seed, members=a.members, num_steps=a.steps,
                                **sampler_kwargs(cfg, nets), hr_mean_conditioning=hr, patch=patch,
                                return_members=True)
        regs.append(out["regression"].float())
        members.append(out["members"].float())
        print(f"  sampled {i + len(batch)}/{len(samples)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    depth = torch.from_numpy(np.stack([s.depth for s in samples]))
    mask = torch.from_numpy(np.stack([s.mask for s in samples]))
    nets.keys = [s.key for s in samples]
    return nets, depth, mask, torch.cat(regs), torch.cat(members), time.time() - t0


def metrics(pred_m: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, rng: dict) -> dict:
    """Pooled point metrics, bias (mean clipped prediction - truth) and edge MAE of ``pred_m``."""
    out = finalize(depth_metric_sums(pred_m, depth, mask, protocol="pooled", **rng))
    valid = mask & (depth <= rng["max_depth"])
    clipped = pred_m.double().clamp(rng["min_depth"], rng["max_depth"])
    out["bias"] = float(((clipped - depth)[valid]).mean()) if valid.any() else math.nan
    out["n"] = int(valid.sum())
    out.update(finalize(sharpness_sums(pred_m[:, None], depth, mask, rng["max_depth"])))
    return out


def in_bin(depth: torch.Tensor, mask: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return mask & (depth >= lo) & (depth < hi)


def table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    print()


def estimates(nets, reg_n, members_n, m: int) -> dict[str, torch.Tensor]:
    """The point estimates in metres from the first ``m`` members."""
    den = nets.norm.denormalize
    mem = den(members_n[:, :m])
    return {"regression": den(reg_n), "ensemble mean": den(ensemble_mean(members_n[:, :m])),
            "member median": mem.median(dim=1).values, "one member": mem[:, 0]}


def by_bin(nets, depth, mask, reg_n, members_n, rng, m: int) -> None:
    print(f"### 1. Error by true-depth bin ({m} members for the mean and median; pooled; "
          "bias = mean(pred - truth); edge MAE over the whole subset)\n")
    est = estimates(nets, reg_n, members_n, m)
    rows = []
    for name, pred in est.items():
        for lo, hi in BINS:
            r = metrics(pred, depth, in_bin(depth, mask, lo, hi), rng)
            rows.append([name, f"{lo}-{hi}", f"{r['n']:,}", r["mae"], r["rmse"], r["abs_rel"], r["bias"]])
        r = metrics(pred, depth, mask, rng)
        rows.append([f"**{name}**", "all", f"{r['n']:,}", r["mae"], r["rmse"], r["abs_rel"], r["bias"]])
    table(["estimate", "depth m", "pixels", "MAE m", "RMSE m", "abs_rel", "bias m"], rows)
    rows = []
    for name, pred in est.items():
        r = metrics(pred, depth, mask, rng)
        rows.append([name, r["abs_rel"], r["sq_rel"], r["mse"], r["rmse"], r["delta1"], r["mae"],
                     r["mae_10m"], r["boundary_mae"], r["grad_energy"]])
    print(f"Whole subset, the demo's columns ({m} members):\n")
    table(["estimate", "abs_rel", "sq_rel", "MSE", "RMSE m", "d1", "MAE m", "MAE<10", "edge MAE",
           "grad E"], rows)


def crps(members_m: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, rng: dict) -> float:
    return finalize(ensemble_metric_sums(members_m, depth, mask, protocol="pooled", **rng))["crps"]


def by_count(nets, depth, mask, reg_n, members_n, rng) -> None:
    total = members_n.shape[1]
    counts = [c for c in COUNTS if c <= total]
    std = float(nets.diffusion_meta["residual_std"])
    noise_m = nets.norm.denormalize(noise_baseline(reg_n, nets.keys, 0, total, std))
    members_m = nets.norm.denormalize(members_n)
    print("### 2. Ensemble mean (and median) against the member count (members 0..M-1; CRPS of "
          "the members and of the regression + Gaussian noise of the residual std)\n")
    rows, mse = [], {}
    for c in counts:
        est = estimates(nets, reg_n, members_n, c)
        mean = metrics(est["ensemble mean"], depth, mask, rng)
        med = metrics(est["member median"], depth, mask, rng)
        mse[c] = mean["mse"]
        ours, noise = crps(members_m[:, :c], depth, mask, rng), crps(noise_m[:, :c], depth, mask, rng)
        rows.append([c, mean["rmse"], mean["abs_rel"], mean["mae"], mean["mae_10m"],
                     mean["boundary_mae"], med["rmse"], med["abs_rel"], med["mae"],
                     med["boundary_mae"], ours, noise, f"{100 * (1 - ours / noise):.1f} %"])
    table(["M", "mean RMSE", "mean abs_rel", "mean MAE", "mean MAE<10", "mean edge MAE",
           "median RMSE", "median abs_rel", "median MAE", "median edge MAE", "CRPS", "noise CRPS",
           "CRPS gain"], rows)
    if len(counts) > 1:
        last = counts[-1]
        # MSE(M) = MSE_inf + V / M: two points fix both
        var = (mse[1] - mse[last]) / (1 - 1 / last)
        inf = mse[last] - var / last
        print(f"Fit MSE(M) = MSE_inf + V/M through M=1 and M={last}: V = {var:.2f} m², "
              f"MSE_inf = {inf:.2f} m² (RMSE_inf {math.sqrt(max(inf, 0)):.3f} m); "
              + ", ".join(f"M={c}: fit {inf + var / c:.2f} vs measured {mse[c]:.2f}" for c in counts)
              + "\n")


def residuals(nets, depth, mask, reg_n, members_n, rng, m: int) -> None:
    print(f"### 3. True residual vs sampled members by depth bin ({m} members; normalised = "
          f"log depth / alpha; export residual_std {nets.diffusion_meta.get('residual_std'):.4f})\n")
    true_n = nets.norm.normalize(depth)
    mem = members_n[:, :m]
    spread_n = mem.var(dim=1, unbiased=True)
    mem_m = nets.norm.denormalize(mem)
    spread_m = mem_m.var(dim=1, unbiased=True)
    reg_m = nets.norm.denormalize(reg_n)
    sampled = (mem - reg_n[:, None]).mean(dim=1)
    rows = []
    for lo, hi in BINS + [(0, 80)]:
        v = in_bin(depth, mask, lo, hi) & (depth <= rng["max_depth"])
        r_n, r_m = (true_n - reg_n)[v], (depth - reg_m)[v]
        rows.append([f"{lo}-{hi}", f"{int(v.sum()):,}", float(r_n.mean()), float(r_n.std()),
                     float(sampled[v].mean()), float(spread_n[v].mean().sqrt()),
                     float(spread_n[v].mean().sqrt() / r_n.std()), float(r_m.std()),
                     float(spread_m[v].mean().sqrt())])
    table(["depth m", "pixels", "true res. mean (n)", "true res. std (n)", "sampled res. mean (n)",
           "member spread (n)", "spread / true std", "true res. std m", "member spread m"], rows)


def normalisation(nets, depth, mask, members_n, rng, m: int) -> None:
    alpha = nets.norm.alpha
    print(f"### 4. The log normalisation (alpha {alpha}, Dmax {nets.norm.max_depth:g} m; "
          f"{m} members)\n")
    print("0.01 of normalised depth is alpha x 0.01 = "
          f"{100 * (math.exp(alpha * 0.01) - 1):.2f} % of the depth: "
          + ", ".join(f"{d:g} m -> {d * (math.exp(alpha * 0.01) - 1):.3f} m" for d in (2.5, 5, 7.5, 15, 30, 60))
          + "\n")
    geo = nets.norm.denormalize(ensemble_mean(members_n[:, :m]))
    arith = nets.norm.denormalize(members_n[:, :m]).mean(dim=1)
    rows = []
    for lo, hi in BINS + [(0, 80)]:
        v = in_bin(depth, mask, lo, hi)
        g, a_ = metrics(geo, depth, v, rng), metrics(arith, depth, v, rng)
        step = 0.5 * (lo + hi) * (math.exp(alpha * 0.01) - 1)
        rows.append([f"{lo}-{hi}", step, g["mae"], a_["mae"], g["rmse"], a_["rmse"], g["abs_rel"],
                     a_["abs_rel"], g["bias"], a_["bias"]])
    table(["depth m", "0.01 n at bin centre m", "MAE norm-space", "MAE metric", "RMSE norm-space",
           "RMSE metric", "abs_rel norm-space", "abs_rel metric", "bias norm-space", "bias metric"], rows)


def saved(a: argparse.Namespace, nets, rng: dict) -> None:
    """Table 0: the saved regression, ensemble mean and member median of a whole evaluation."""
    preds: dict[str, dict[str, np.ndarray]] = {}
    for tar in sorted(Path(a.predictions).glob("pred-*.tar")):
        for raw in iter_shard_range(str(tar)):
            preds[raw["__key__"]] = {k[:-4]: npy_load(v) for k, v in raw.items() if k.endswith(".npy")}
    bins, h, w = nets.data_shape
    truth, masks, est = [], [], {"regression": [], "mean": [], "median": []}
    for url, total in split_shards(a.data)[0]:
        for s in iter_samples(url, 0, None, shapes_of(nets), total):
            truth.append(s.depth)
            masks.append(s.mask)
            for k in est:
                est[k].append(preds[s.key][k])
    depth, mask = torch.from_numpy(np.stack(truth)), torch.from_numpy(np.stack(masks))
    names = {"regression": "regression", "mean": "ensemble mean", "median": "member median"}
    print(f"### 0. The evaluation's saved estimates, all {len(truth)} samples ({a.predictions})\n")
    rows, whole = [], []
    for k, name in names.items():
        pred = torch.from_numpy(np.stack(est[k]))
        for lo, hi in BINS:
            r = metrics(pred, depth, in_bin(depth, mask, lo, hi), rng)
            rows.append([name, f"{lo}-{hi}", f"{r['n']:,}", r["mae"], r["rmse"], r["abs_rel"], r["bias"]])
        r = metrics(pred, depth, mask, rng)
        whole.append([name, r["abs_rel"], r["sq_rel"], r["mse"], r["rmse"], r["delta1"], r["mae"],
                      r["mae_10m"], r["boundary_mae"], r["grad_energy"]])
    table(["estimate", "depth m", "pixels", "MAE m", "RMSE m", "abs_rel", "bias m"], rows)
    table(["estimate", "abs_rel", "sq_rel", "MSE", "RMSE m", "d1", "MAE m", "MAE<10",
           "edge MAE (of this estimate)", "grad E"], whole)
    stacked = {k: torch.from_numpy(np.stack(v)) for k, v in est.items()}
    by_regression_depth(nets, depth, mask, stacked, rng)
    combined(nets, depth, mask, stacked, rng)


def combined(nets, depth: torch.Tensor, mask: torch.Tensor, est: dict, rng: dict) -> None:
    """Table 0c: the regression mean plus a share ``lam`` of the ensemble mean's residual, in
    normalised depth (a weighted geometric mean in metres): how much of the residual pays."""
    n = lambda x: nets.norm.normalize(x.double().clamp(rng["min_depth"], rng["max_depth"]))  # noqa: E731
    r, m = n(est["regression"]), n(est["mean"])
    reg = metrics(est["regression"], depth, mask, rng)
    print("### 0c. Regression + lam x (ensemble mean - regression), normalised depth\n")
    rows = []
    for lam in (0.25, 0.5, 0.75, 1.0):
        e = metrics(nets.norm.denormalize(r + lam * (m - r)), depth, mask, rng)
        rows.append([f"{lam:g}", e["abs_rel"], e["sq_rel"], e["mse"], e["rmse"], e["delta1"],
                     e["boundary_mae"], verdict(e, reg)])
    table(["lam", "abs_rel", "sq_rel", "MSE", "RMSE m", "d1", "edge MAE", "vs the regression"], rows)


def by_regression_depth(nets, depth: torch.Tensor, mask: torch.Tensor, est: dict, rng: dict) -> None:
    """Residuals binned by the regression's depth, what the residual net sees (binning by the true
    depth selects on the outcome): the true residual's mean against the estimates' mean residual."""
    lo, hi = rng["min_depth"], rng["max_depth"]
    n = lambda x: nets.norm.normalize(x.double().clamp(lo, hi))  # noqa: E731
    reg_m = est["regression"].double()
    t, r = n(depth), n(reg_m)
    valid = mask & (depth <= hi)
    print("### 0b. By the regression's depth: mean residual (normalised) of the truth and of each "
          "estimate, and sq_rel\n")
    rows = []
    for b_lo, b_hi in BINS + [(0, 80)]:
        v = valid & (reg_m >= b_lo) & ((reg_m < b_hi) if b_hi < 80 else (reg_m <= b_hi))
        res = [(t - r)[v].mean()] + [(n(est[k]) - r)[v].mean() for k in ("mean", "median")]
        row = [f"{b_lo}-{b_hi}", f"{int(v.sum()):,}", *(f"{float(x):+.4f}" for x in res)]
        row += [metrics(est[k], depth, v, rng)["sq_rel"] for k in ("regression", "mean", "median")]
        rows.append(row)
    table(["regression depth m", "pixels", "true res. mean (n)", "mean's res. (n)",
           "median's res. (n)", "sq_rel regression", "sq_rel mean", "sq_rel median"], rows)


GOAL = (("mse", "MSE", True), ("rmse", "RMSE", True), ("abs_rel", "abs_rel", True),
        ("sq_rel", "sq_rel", True), ("delta1", "d1", False))


def verdict(est: dict, reg: dict) -> str:
    """Which of the goal's metrics ``est`` beats the regression on, which it loses, edge MAE."""
    better = [n for k, n, low in GOAL if (est[k] < reg[k]) == low and est[k] != reg[k]]
    worse = [n for k, n, low in GOAL if (est[k] > reg[k]) == low and est[k] != reg[k]]
    edge = "edge ok" if est["boundary_mae"] <= reg["boundary_mae"] else "edge worse"
    met = not worse and len(better) >= 3 and edge == "edge ok"
    return (f"better {', '.join(better) or '-'}; worse {', '.join(worse) or '-'}; {edge}"
            + ("; **point goal met**" if met else ""))


def fixes(evals: list[str]) -> None:
    """The fixes table: each ``NAME=EVAL_DIR`` evaluation's ensemble mean and member median against
    its regression (metrics.json), with the CRPS gain over the noise-dressed regression."""
    import json

    rows = []
    for item in evals:
        name, _, out = item.rpartition("=")
        m = json.loads((Path(out) / "metrics.json").read_text())
        reg, diff = m["regression"], m["diffusion"]
        gain = f"{100 * (1 - diff['crps'] / m['noise_baseline']['crps']):.1f} %"
        # before the point estimates had their own sharpness columns, the mean's were the members'
        for key, label in (("regression", "regression"), ("diffusion", "mean"),
                           ("diffusion_median", "median")):
            e = m.get(key)
            if e is None or "boundary_mae" not in e:
                continue
            rows.append([name or out, label, e["abs_rel"], e["sq_rel"], e["mse"], e["rmse"],
                         e["delta1"], e["boundary_mae"], gain if key == "diffusion" else "",
                         "" if key == "regression" else verdict(e, reg)])
    table(["variant", "estimate", "abs_rel", "sq_rel", "MSE", "RMSE m", "d1", "edge MAE",
           "CRPS gain", "vs the regression"], rows)


def bootstrap(evals: list[str], draws: int = 10000, seed: int = 0) -> None:
    """How sure each evaluation's CRPS gain is: its sequences (``metrics.json["sequences"]``)
    resampled with replacement ``draws`` times, the pooled gain over the noise-dressed regression
    of each draw; prints the split's gain, the 5-95 % range and each sequence's own gain."""
    import json

    rows = []
    for item in evals:
        name, _, out = item.rpartition("=")
        seqs = json.loads((Path(out) / "metrics.json").read_text()).get("sequences") or {}
        if not seqs:
            raise SystemExit(f"{out}/metrics.json has no per-sequence tables to resample")
        pix = np.array([s["diffusion"]["num_valid_pixels"] for s in seqs.values()], float)
        ours = np.array([s["diffusion"]["crps"] for s in seqs.values()]) * pix
        noise = np.array([s["noise_baseline"]["crps"] for s in seqs.values()]) * pix
        pick = np.random.default_rng(seed).integers(0, len(seqs), (draws, len(seqs)))
        gains = 100 * (1 - ours[pick].sum(1) / noise[pick].sum(1))
        lo, hi = np.percentile(gains, [5, 95])
        own = " ".join(f"{100 * (1 - o / n):.0f}" for o, n in zip(ours, noise))
        rows.append([name or out, len(seqs), f"{100 * (1 - ours.sum() / noise.sum()):.1f} %",
                     f"{lo:.1f} to {hi:.1f} %", f"{np.mean(gains >= 20):.2f}", own])
    print(f"### CRPS gain over the noise-dressed regression, sequences resampled ({draws} draws)\n")
    table(["evaluation", "sequences", "gain", "5-95 %", "share of draws >= 20 %",
           "each sequence's gain, %"], rows)


def denoised(a: argparse.Namespace) -> None:
    """Table 5: the regression mean plus the residual net's ``D(0; k sigma_data)`` (one net
    evaluation, no member noise) for each ``k`` of ``--denoised``, on the first samples."""
    cfg = InferenceSettings(regression=a.regression, diffusion=a.diffusion, device="cpu")
    nets = load_nets(cfg, torch.device("cpu"))
    bins, h, w = nets.data_shape
    samples = [s for url, total in split_shards(a.data)[0]
               for s in iter_samples(url, 0, None, shapes_of(nets), total)][:a.max_samples]
    sd = float(nets.diffusion_meta["sigma_data"])
    hr = bool(nets.diffusion_meta["spec"].get("hr_mean_conditioning", False))
    patch = make_patching(cfg, nets)
    lo, hi = nets.depth_range()
    rng = {"min_depth": lo, "max_depth": hi}
    preds: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(samples), a.batch):
        part = samples[i:i + a.batch]
        events = net_input_batch([s.events for s in part], nets.voxel_norm,
                                 [s.context for s in part])
        mean = nets.regression(events).float()
        preds.setdefault("regression", []).append(mean)
        for k in a.denoised:
            out = denoised_mean(nets.diffusion, nets.regression, events, k * sd, hr, patch, mean)
            preds.setdefault(f"D(0; {k:g} sigma_data)", []).append(out["denoised"])
    depth = torch.from_numpy(np.stack([s.depth for s in samples]))
    mask = torch.from_numpy(np.stack([s.mask for s in samples]))
    print(f"### 5. Regression + D(0; sigma), {len(samples)} samples of {a.data} "
          f"(sigma_data {sd:.4f})\n")
    rows, reg = [], None
    for name, chunks in preds.items():
        r = metrics(nets.norm.denormalize(torch.cat(chunks)), depth, mask, rng)
        reg = r if reg is None else reg
        rows.append([name, r["abs_rel"], r["sq_rel"], r["mse"], r["rmse"], r["delta1"],
                     r["boundary_mae"], "" if r is reg else verdict(r, reg)])
    table(["estimate", "abs_rel", "sq_rel", "MSE", "RMSE m", "d1", "edge MAE", "vs the regression"],
          rows)


def shapes_of(nets) -> dict:
    """The member shapes of the nets' input split (``context.npy`` with a temporal context)."""
    bins, h, w = nets.data_shape
    return shapes_for(bins, h, w, (nets.context or {}).get("bins", 0))


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.fixes:
        fixes(a.fixes)
        return 0
    if a.bootstrap:
        bootstrap(a.bootstrap)
        return 0
    if a.denoised:
        with torch.no_grad():
            denoised(a)
        return 0
    nets, depth, mask, reg_n, members_n, secs = load(a)
    lo, hi = nets.depth_range()
    rng = {"min_depth": lo, "max_depth": hi}
    m = min(a.eval_members, a.members)
    print(f"{depth.shape[0]} samples of {a.data}, {members_n.shape[1]} members x {a.steps} steps "
          f"(stochastic, S_churn 10, seed 0) sampled in {secs:.0f} s on "
          f"{torch.get_num_threads()} CPU threads; predictions clipped to [{lo:.3f}, {hi:g}] m\n")
    if a.predictions and a.predictions.lower() != "none":
        saved(a, nets, rng)
    by_bin(nets, depth, mask, reg_n, members_n, rng, m)
    by_count(nets, depth, mask, reg_n, members_n, rng)
    residuals(nets, depth, mask, reg_n, members_n, rng, m)
    normalisation(nets, depth, mask, members_n, rng, m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
