"""Model benchmarks: our U-Net, residual-loss step and samplers beside PhysicsNeMo's, same process.

    PYTHONPATH=. /tmp/pnemo/bin/python bench/model_bench.py [--sections unet,residual,sampling]
    .venv/bin/python bench/model_bench.py          # ours only

When ``physicsnemo`` imports in the running interpreter (a PhysicsNeMo 2.2.2 environment beside CPU
torch; our package is pure torch and imports there too), each section times ours and PhysicsNeMo's
in the same process and thread count, alternating them repeat by repeat so that load from other
processes hits both alike, and prints the medians and ours/reference.
Otherwise it prints ours only. Both sides start from the same weights (our U-Nets use
PhysicsNeMo's parameter names).

Sections:
  unet      SongUNet forward + backward, batch 8, 64x64, 6 -> 1 channels.
  residual  one residual-loss training step: frozen regression mean, loss, backward, AdamW step.
  sampling  stochastic Heun sampler on a SongUNetPosEmbd, whole 256x256 image vs 128x128 patches.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
COND_CHANNELS = 5  # event voxel-grid bins; the U-Nets see 1 target channel + these


@dataclass(frozen=True)
class Sizes:
    """Problem and network sizes shared by every section."""

    batch: int = 8
    res: int = 64
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    sample_res: int = 256
    patch: int = 128
    sample_steps: int = 4

    def unet_kwargs(self, in_channels: int, res: Optional[int] = None) -> dict[str, Any]:
        """SongUNet arguments (PhysicsNeMo names), ``out_channels`` 1."""
        return dict(img_resolution=res or self.res, in_channels=in_channels, out_channels=1,
                    model_channels=self.model_channels, channel_mult=list(self.channel_mult),
                    num_blocks=self.num_blocks, attn_resolutions=list(self.attn_resolutions),
                    dropout=0.0)


FULL = Sizes()
# --quick: checks that every code path runs in seconds; its timings mean nothing
QUICK = Sizes(batch=2, res=32, model_channels=16, sample_res=64, patch=32, sample_steps=2)


def load_reference() -> Optional[Any]:
    """The ``physicsnemo`` module when it imports here, else None."""
    try:
        import tv_shim  # noqa: F401  (lets PhysicsNeMo's torchvision import beside CPU torch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import physicsnemo
            import physicsnemo.diffusion.metrics  # noqa: F401
            import physicsnemo.diffusion.multi_diffusion  # noqa: F401
            import physicsnemo.diffusion.preconditioners  # noqa: F401
            import physicsnemo.diffusion.samplers  # noqa: F401
            import physicsnemo.models.diffusion_unets  # noqa: F401
    except ImportError:
        return None
    return physicsnemo


def interleaved_ms(steps: dict[str, Callable[[], None]], warmup: int, repeats: int
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall time (ms) of each step, timed in turn within each repeat; and first-call times."""
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            ms = (time.perf_counter() - t0) * 1e3
            if i == 0:
                first[name] = ms
            if i >= warmup:
                times[name].append(ms)
    return {name: statistics.median(t) for name, t in times.items()}, first


def print_table(title: str, rows: list[tuple[str, dict[str, float]]], unit: str = "ms") -> None:
    """Rows of ``{'resdepth': x, 'physicsnemo': y}``, with ours/reference where both exist."""
    print(title)
    print(f"  {'':28s} {'resdepth':>12s} {'physicsnemo':>12s} {'ours/ref':>9s}")
    for label, row in rows:
        ours, ref = row.get("resdepth"), row.get("physicsnemo")
        cells = [f"{'-':>12s}" if v is None else f"{v:9.1f} {unit:2s}" if unit else f"{v:12.3f}"
                 for v in (ours, ref)]
        ratio = f"{ours / ref:9.3f}" if ours is not None and ref is not None else f"{'-':>9s}"
        print(f"  {label:28s} {cells[0]} {cells[1]} {ratio}")


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- unet


def section_unet(sizes: Sizes, pnemo: Optional[Any], repeats: int) -> None:
    """SongUNet forward + backward of ``mean(out^2)`` on random input and noise labels."""
    from resdepth.models import SongUNet

    kw = sizes.unet_kwargs(1 + COND_CHANNELS)
    torch.manual_seed(0)
    nets = {"resdepth": SongUNet(**kw).train()}
    if pnemo is not None:
        nets["physicsnemo"] = pnemo.models.diffusion_unets.SongUNet(**kw).train()
        nets["resdepth"].load_state_dict(nets["physicsnemo"].state_dict())
    x = torch.randn(sizes.batch, kw["in_channels"], sizes.res, sizes.res)
    sigma = torch.rand(sizes.batch) + 0.1

    def fwd_bwd(net: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            net.zero_grad(set_to_none=True)
            net(x, sigma, None).square().mean().backward()
        return step

    ms, _ = interleaved_ms({k: fwd_bwd(n) for k, n in nets.items()}, warmup=2, repeats=repeats)
    print_table(f"[unet] SongUNet forward+backward, batch {sizes.batch}, {sizes.res}x{sizes.res}, "
                f"in {kw['in_channels']} out 1, {count_params(nets['resdepth']):,} params, "
                f"median of {repeats}", [("forward+backward", ms)])


# ---------------------------------------------------------------- residual


def residual_ours(sizes: Sizes, ref_weights: Optional[tuple[dict, dict]]) -> Callable[[], None]:
    """``ResidualLoss`` on ``EDMResidualNet(SongUNet)`` with a frozen ``RegressionNet(SongUNet)``."""
    from resdepth.diffusion.loss import ResidualLoss
    from resdepth.models.precond import EDMResidualNet, RegressionNet
    from resdepth.models import SongUNet

    kw = sizes.unet_kwargs(1 + COND_CHANNELS)
    torch.manual_seed(0)
    net, reg = EDMResidualNet(SongUNet(**kw)).train(), RegressionNet(SongUNet(**kw)).eval()
    if ref_weights is not None:
        net.unet.load_state_dict(ref_weights[0])
        reg.unet.load_state_dict(ref_weights[1])
    reg.requires_grad_(False)
    loss_fn, opt = ResidualLoss(reg), torch.optim.AdamW(net.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(0)
    depth = torch.randn(sizes.batch, 1, sizes.res, sizes.res)
    cond = torch.randn(sizes.batch, COND_CHANNELS, sizes.res, sizes.res)
    mask = torch.ones_like(depth, dtype=torch.bool)  # every pixel valid, as the reference assumes

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net, depth, cond, mask, generator=g).backward()
        opt.step()
    return step


def residual_reference(pnemo: Any, sizes: Sizes) -> tuple[Callable[[], None], tuple[dict, dict]]:
    """PhysicsNeMo's ``ResidualLoss`` on ``EDMPrecondSuperResolution`` + ``CorrDiffRegressionUNet``.

    The loss passes ``embedding_selector``/``global_index`` to the wrapped U-Net, which the plain
    ``SongUNet`` does not accept; a ``SongUNetPosEmbd`` with ``N_grid_channels=0`` is the same
    network (no grid, same parameters) with that signature, as CorrDiff itself uses.
    """
    kw = sizes.unet_kwargs(0)
    for k in ("in_channels", "out_channels", "img_resolution"):
        kw.pop(k)
    torch.manual_seed(0)
    net = pnemo.diffusion.preconditioners.EDMPrecondSuperResolution(
        img_resolution=sizes.res, img_in_channels=COND_CHANNELS, img_out_channels=1,
        model_type="SongUNetPosEmbd", N_grid_channels=0, **kw).train()
    reg = pnemo.models.diffusion_unets.CorrDiffRegressionUNet(
        img_resolution=sizes.res, img_in_channels=COND_CHANNELS, img_out_channels=1,
        model_type="SongUNet", **kw).eval()
    reg.requires_grad_(False)
    loss_fn = pnemo.diffusion.metrics.ResidualLoss(reg, P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    depth = torch.randn(sizes.batch, 1, sizes.res, sizes.res)
    cond = torch.randn(sizes.batch, COND_CHANNELS, sizes.res, sizes.res)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net, depth, cond).mean().backward()  # the reference loss is per pixel, unreduced
        opt.step()
    return step, (net.model.state_dict(), reg.model.state_dict())


def section_residual(sizes: Sizes, pnemo: Optional[Any], repeats: int) -> None:
    """One training step of the residual stage: loss forward, backward, AdamW update."""
    steps: dict[str, Callable[[], None]] = {}
    weights = None
    if pnemo is not None:
        ref_step, weights = residual_reference(pnemo, sizes)
    steps["resdepth"] = residual_ours(sizes, weights)
    if pnemo is not None:
        steps["physicsnemo"] = ref_step
    ms, _ = interleaved_ms(steps, warmup=2, repeats=repeats)
    print_table(f"[residual] residual-loss step (frozen regression mean + EDM loss forward, "
                f"backward, AdamW), batch {sizes.batch}, {sizes.res}x{sizes.res}, "
                f"{COND_CHANNELS} event channels + 1 target, median of {repeats}",
                [("training step", ms)])


# ---------------------------------------------------------------- sampling


def sampling_nets(sizes: Sizes, pnemo: Optional[Any]) -> dict[str, torch.nn.Module]:
    """Residual nets on a patch-trained ``SongUNetPosEmbd`` (condition: events + resized events)."""
    from resdepth.models.precond import EDMResidualNet, residual_in_channels
    from resdepth.models import SongUNetPosEmbd

    kw = sizes.unet_kwargs(0, res=sizes.sample_res)
    grid = dict(gridtype="sinusoidal", N_grid_channels=4)
    in_ch = residual_in_channels(COND_CHANNELS, patching=True) + grid["N_grid_channels"]
    torch.manual_seed(0)
    nets = {"resdepth": EDMResidualNet(SongUNetPosEmbd(**{**kw, "in_channels": in_ch}, **grid))}
    if pnemo is not None:
        for k in ("in_channels", "out_channels", "img_resolution"):
            kw.pop(k)
        with warnings.catch_warnings():  # the legacy-formula note of the 4-channel sinusoidal grid
            warnings.simplefilter("ignore")
            ref = pnemo.diffusion.preconditioners.EDMPrecondSuperResolution(
                img_resolution=sizes.sample_res, img_in_channels=in_ch - 1, img_out_channels=1,
                model_type="SongUNetPosEmbd", **grid, **kw)
        nets["resdepth"].unet.load_state_dict(ref.model.state_dict())
        nets["physicsnemo"] = ref
    return {k: n.eval().requires_grad_(False) for k, n in nets.items()}


def sampling_steps(sizes: Sizes, pnemo: Optional[Any], nets: dict[str, torch.nn.Module],
                   latents: torch.Tensor, cond: torch.Tensor, out: dict[str, torch.Tensor]
                   ) -> dict[str, Callable[[], None]]:
    """``'{impl} {whole|patched}'`` -> one sampler call; its result lands in ``out``."""
    from resdepth.diffusion.patching import GridPatching
    from resdepth.diffusion.sampler import stochastic_sampler

    img, patch = (sizes.sample_res,) * 2, (sizes.patch,) * 2
    common = dict(num_steps=sizes.sample_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                  S_churn=0.0)

    def ours(patching: GridPatching) -> Callable[[], None]:
        def step() -> None:
            out[f"resdepth {label}"] = stochastic_sampler(
                nets["resdepth"], latents, cond, patching=patching, global_cond=cond, **common)
        label = "whole" if patching.num_patches == 1 else "patched"
        return step

    # a patch-trained net sees whole frames as one image-sized patch (it needs the resized events)
    steps = {"resdepth whole": ours(GridPatching(img, img)),
             "resdepth patched": ours(GridPatching(img, patch))}
    if pnemo is None:
        return steps
    grid_patching = pnemo.diffusion.multi_diffusion.GridPatching2D
    sampler = pnemo.diffusion.samplers.stochastic_sampler

    def ref(label: str, patching: Any) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                out[f"physicsnemo {label}"] = sampler(nets["physicsnemo"], latents, cond,
                                                      patching=patching, **common)
        return step

    steps["physicsnemo whole"] = ref("whole", grid_patching(img, img))
    steps["physicsnemo patched"] = ref("patched", grid_patching(img, patch))
    return steps


def section_sampling(sizes: Sizes, pnemo: Optional[Any], repeats: int) -> None:
    """Stochastic Heun sampler (no churn), batch 1: whole image vs grid patches, no overlap.

    Sampler only (the regression mean is not part of it). PhysicsNeMo compiles its patching helpers
    with ``torch.compile`` on first use; "first patched call" shows that one-off cost.
    """
    nets = sampling_nets(sizes, pnemo)
    torch.manual_seed(1)
    latents = torch.randn(1, 1, sizes.sample_res, sizes.sample_res)
    cond = torch.randn(1, COND_CHANNELS, sizes.sample_res, sizes.sample_res)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        ms, first = interleaved_ms(sampling_steps(sizes, pnemo, nets, latents, cond, out),
                                   warmup=1, repeats=repeats)
    impls = ["resdepth"] + (["physicsnemo"] if pnemo is not None else [])
    s = {label: {i: ms[f"{i} {label}"] / 1e3 for i in impls} for label in ("whole", "patched")}
    n_patches = (sizes.sample_res // sizes.patch) ** 2
    rows = [("whole image (s)", s["whole"]),
            (f"{n_patches} patches {sizes.patch}x{sizes.patch} (s)", s["patched"]),
            ("patched / whole", {i: s["patched"][i] / s["whole"][i] for i in impls})]
    if pnemo is not None:
        rows.append(("first patched call (s)", {i: first[f"{i} patched"] / 1e3 for i in impls}))
    print_table(f"[sampling] stochastic Heun sampler, {sizes.sample_steps} steps, batch 1, "
                f"{sizes.sample_res}x{sizes.sample_res}, SongUNetPosEmbd "
                f"{count_params(nets['resdepth']):,} params, median of {repeats}",
                rows, unit="")
    if pnemo is not None:
        for label in ("whole", "patched"):
            diff = (out[f"resdepth {label}"] - out[f"physicsnemo {label}"].to(torch.float32)).abs()
            print(f"  same weights and latents, {label}: max |ours - reference| = "
                  f"{diff.max().item():.2e}")


SECTIONS: dict[str, tuple[Callable[[Sizes, Optional[Any], int], None], int]] = {
    "unet": (section_unet, 7),  # (section, default repeats)
    "residual": (section_residual, 7),
    "sampling": (section_sampling, 3),
}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed repeats per section (default: 7 unet/residual, 3 sampling)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, the same for both")
    p.add_argument("--quick", action="store_true", help="tiny sizes to check the script runs")
    a = p.parse_args(argv)
    names = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    torch.set_num_threads(a.threads)
    pnemo = load_reference()
    ref = (f"physicsnemo {pnemo.__version__}, interleaved in this process" if pnemo is not None
           else "physicsnemo not importable here: ours only "
                "(run with the reference environment's python and PYTHONPATH=. to compare)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {ref}")
    sizes = QUICK if a.quick else FULL
    for name in names:
        section, default_repeats = SECTIONS[name]
        section(sizes, pnemo, a.repeat or default_repeats)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
