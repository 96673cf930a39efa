"""Outputs of our U-Nets equal PhysicsNeMo 2.2.2's for the same weights (reference environment).

A subprocess in the reference interpreter builds PhysicsNeMo's net with a seed, draws O(1)
weights, saves it with PhysicsNeMo's own ``Module.save`` (a real ``.mdlus``) and its outputs for
fixed inputs; we import the file with ``load_physicsnemo`` and compare within 1e-5.

Sinusoidal grid (PhysicsNeMo PR #1096): PR #1000 had stacked the x and y parts of the 4-channel
sinusoidal grid in the wrong order; #1096 restored the original CorrDiff order, which 2.2.2 ships.
Our grid is built from the closed form (tests/models/test_song_unet.py checks it against the
formula), so here the sinusoidal configs are compared exactly with 2.2.2, and
``test_swapped_grid_order_is_detected`` shows that the PR #1000 order would fail this comparison
(with random inputs: the reference's own tests used inputs of ones and missed it).
"""
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from resdepth.models import load_physicsnemo

REFERENCE_PYTHON = os.environ.get("RESDEPTH_PHYSICSNEMO_PYTHON", "/tmp/pnemo/bin/python")
pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not Path(REFERENCE_PYTHON).exists(),
                       reason=f"PhysicsNeMo reference environment absent ({REFERENCE_PYTHON})"),
]

CONFIGS = {
    "songunet_readme": ("SongUNet", dict(
        img_resolution=64, in_channels=6, out_channels=1, model_channels=32,
        channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16], dropout=0.0)),
    "songunet_ncsn": ("SongUNet", dict(
        img_resolution=[32, 16], in_channels=3, out_channels=2, model_channels=16,
        channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], embedding_type="fourier",
        encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1],
        label_dim=3, augment_dim=2, dropout=0.0)),
    "songunet_skip_zero": ("SongUNet", dict(
        img_resolution=32, in_channels=3, out_channels=2, model_channels=16, channel_mult=[1, 2],
        num_blocks=1, attn_resolutions=[16], encoder_type="skip", decoder_type="skip",
        embedding_type="zero", additive_pos_embed=True, dropout=0.0)),
    "posembd_sinusoidal": ("SongUNetPosEmbd", dict(
        img_resolution=[32, 48], in_channels=3 + 4, out_channels=1, model_channels=16,
        channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)),
    "posembd_learnable_patches": ("SongUNetPosEmbd", dict(
        img_resolution=32, in_channels=3 + 6, out_channels=1, model_channels=16,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], gridtype="learnable",
        N_grid_channels=6, dropout=0.0)),
    "posembd_linear": ("SongUNetPosEmbd", dict(
        img_resolution=32, in_channels=3 + 2, out_channels=1, model_channels=16,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], gridtype="linear",
        N_grid_channels=2, dropout=0.0)),
}

REFERENCE_SCRIPT = textwrap.dedent('''
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import tv_shim  # noqa: F401
    import torch
    import physicsnemo.models.diffusion_unets as unets


    def make(out_dir, cls_name, kwargs):
        torch.manual_seed(0)
        net = getattr(unets, cls_name)(**kwargs)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # O(1) weights everywhere: the default init nearly zeroes outputs
            for name, p in net.named_parameters():
                base = 1.0 if name.endswith("norm.weight") or "norm0.weight" in name else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1) + base)
        net.save(f"{out_dir}/net.mdlus")
        res = kwargs["img_resolution"]
        h, w = (res, res) if isinstance(res, int) else res
        pos = "PosEmbd" in cls_name
        c = kwargs["in_channels"] - (kwargs.get("N_grid_channels", 4) if pos else 0)
        gen = torch.Generator().manual_seed(2)
        inp = {"x": torch.randn(2, c, h, w, generator=gen),
               "sigma": torch.rand(2, generator=gen) + 0.2}
        for key, dim in (("class_labels", "label_dim"), ("augment_labels", "augment_dim")):
            if kwargs.get(dim):
                inp[key] = torch.randn(2, kwargs[dim], generator=gen)
        if pos:  # two 16x16 patches (top-left, bottom-right) of the global grid, 2 copies
            rows = torch.arange(16)[:, None].expand(16, 16)
            cols = torch.arange(16)[None, :].expand(16, 16)
            inp["global_index"] = torch.stack([torch.stack([rows, cols]),
                                               torch.stack([rows + h - 16, cols + w - 16])])
            inp["patch_x"] = torch.randn(4, c, 16, 16, generator=gen)
            inp["patch_sigma"] = torch.rand(4, generator=gen) + 0.2
        out = {}
        for dtype in (torch.float32, torch.float64):
            net.to(dtype)
            t = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inp.items()}
            with torch.no_grad():
                for mode in ("eval", "train"):
                    getattr(net, mode)()
                    out[f"{mode}_{dtype}"] = net(t["x"], t["sigma"], t.get("class_labels"),
                                                 augment_labels=t.get("augment_labels"))
                if pos:
                    net.eval()
                    out[f"patches_{dtype}"] = net(t["patch_x"], t["patch_sigma"], None,
                                                  global_index=t["global_index"])
        if pos:
            out["grid"] = net.pos_embd.detach().float()
        torch.save({"inputs": inp, "outputs": out}, f"{out_dir}/io.pt")


    for name, (cls_name, kwargs) in json.loads(sys.argv[2]).items():
        make(f"{sys.argv[1]}/{name}", cls_name, kwargs)
''')


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    """One reference subprocess (imports are slow) saving every config's net, inputs, outputs."""
    root = tmp_path_factory.mktemp("physicsnemo")
    for name in CONFIGS:
        (root / name).mkdir()
    script = root / "reference.py"
    script.write_text(REFERENCE_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([REFERENCE_PYTHON, str(script), str(root), json.dumps(CONFIGS)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _load(reference_dir: Path, config: str):
    ref = torch.load(reference_dir / config / "io.pt", weights_only=True)
    return load_physicsnemo(reference_dir / config / "net.mdlus"), ref["inputs"], ref["outputs"]


def _call(net, inp, dtype, patches=False):
    t = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inp.items()}
    with torch.no_grad():
        if patches:
            return net(t["patch_x"], t["patch_sigma"], None, global_index=t["global_index"])
        return net(t["x"], t["sigma"], t.get("class_labels"), augment_labels=t.get("augment_labels"))


def _assert_match(out, expect, dtype):
    """float64: the same function to 1e-10. float32: within 1e-5 of the output scale (the
    reference itself is 2e-5 away from its own float64 result at scale ~6)."""
    assert expect.abs().max() > 0.1, "outputs too small to be a meaningful comparison"
    if dtype == torch.float64:
        torch.testing.assert_close(out, expect, rtol=0, atol=1e-10)
    else:
        err = (out - expect).abs().max().item()
        assert err <= 1e-5 * max(1.0, expect.abs().max().item()), err


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_outputs_match_physicsnemo(reference_dir, config):
    net, inp, ref = _load(reference_dir, config)
    assert type(net).__name__ == CONFIGS[config][0]
    for dtype in (torch.float32, torch.float64):
        net.to(dtype)
        for mode in ("eval", "train"):
            getattr(net, mode)()
            _assert_match(_call(net, inp, dtype), ref[f"{mode}_{dtype}"], dtype)
        if "patch_x" in inp:
            net.eval()
            _assert_match(_call(net, inp, dtype, patches=True), ref[f"patches_{dtype}"], dtype)
    if "grid" in ref:
        torch.testing.assert_close(net.pos_embd.detach().float(), ref["grid"], rtol=0, atol=1e-6)


def test_swapped_grid_order_is_detected(reference_dir):
    """The PR #1000 order (y part first) gives clearly different outputs for random inputs."""
    net, inp, ref = _load(reference_dir, "posembd_sinusoidal")
    net.eval().pos_embd = net.pos_embd[[1, 0, 3, 2]]
    out = _call(net, inp, torch.float32)
    assert (out - ref["eval_torch.float32"]).abs().max() > 1e-2
