"""SongUNet / SongUNetPosEmbd without the reference: sizes, names, checkpointing, patches, import."""
import io
import json
import math
import zipfile

import pytest
import torch

from resdepth.models import CheckpointMismatch, SongUNet, SongUNetPosEmbd, load_physicsnemo
from resdepth.models.grid import positional_grid, sinusoidal_grid

README = dict(img_resolution=64, in_channels=6, out_channels=1, model_channels=32,
              channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[16])
NCSN = dict(img_resolution=[32, 16], in_channels=3, out_channels=2, model_channels=16,
            channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], embedding_type="fourier",
            encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1],
            label_dim=3, augment_dim=2)
SKIP = dict(img_resolution=32, in_channels=3, out_channels=2, model_channels=16, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[16], encoder_type="skip", decoder_type="skip",
            embedding_type="zero", additive_pos_embed=True)
POS = dict(img_resolution=[32, 48], in_channels=3 + 4, out_channels=1, model_channels=16,
           channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8])
POS_LEARN = dict(img_resolution=32, in_channels=3 + 6, out_channels=1, model_channels=16,
                 channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], gridtype="learnable",
                 N_grid_channels=6)
SMALL = dict(img_resolution=16, in_channels=3, out_channels=1, model_channels=8,
             channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Counts printed by PhysicsNeMo 2.2.2 for the same arguments.
@pytest.mark.parametrize("cls, kw, count", [
    (SongUNet, README, 1_754_433),
    (SongUNet, NCSN, 324_022),
    (SongUNet, SKIP, 201_044),
    (SongUNetPosEmbd, POS, 317_985),
    (SongUNetPosEmbd, POS_LEARN, 196_065),
])
def test_parameter_count_matches_physicsnemo(cls, kw, count):
    assert n_params(cls(**kw)) == count


def test_parameter_names_and_buffers():
    sd = SongUNet(**README).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["map_noise.freqs"] == (16,)
    assert shapes["map_layer0.weight"] == (128, 32)
    assert shapes["enc.64x64_conv.weight"] == (32, 6, 3, 3)
    assert shapes["enc.32x32_down.conv0.resample_filter"] == (1, 1, 2, 2)
    assert shapes["enc.16x16_block0.attn.qkv.weight"] == (192, 64, 1, 1)
    assert shapes["enc.16x16_block1.attn.norm.weight"] == (64,)
    assert shapes["dec.16x16_in0.attn.proj.bias"] == (64,)
    assert shapes["dec.64x64_block2.skip.weight"] == (32, 64, 1, 1)
    assert shapes["dec.64x64_aux_conv.weight"] == (1, 32, 3, 3)
    assert "dec.32x32_aux_norm.weight" not in shapes  # standard decoder: level 0 only
    pos = SongUNetPosEmbd(**POS_LEARN).state_dict()
    assert tuple(pos["pos_embd"].shape) == (6, 32, 32)
    assert "pos_embd" not in SongUNetPosEmbd(**POS).state_dict()  # fixed grids are not saved


@pytest.mark.parametrize("kw", [SMALL, dict(SMALL, encoder_type="residual", decoder_type="skip")])
def test_gradient_checkpointing_gives_same_outputs_and_grads(kw):
    torch.manual_seed(0)
    plain = SongUNet(**kw)
    ckpt = SongUNet(**dict(kw, checkpoint_level=2))
    ckpt.load_state_dict(plain.state_dict())
    _randomize(plain), ckpt.load_state_dict(plain.state_dict())
    assert ckpt.checkpoint_threshold < plain.checkpoint_threshold
    x, sigma = torch.randn(2, 3, 16, 16), torch.rand(2) + 0.1
    outs, grads = [], []
    for net in (plain, ckpt):
        out = net(x, sigma, None)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_global_index_patches_equal_the_grid_slices():
    net = SongUNetPosEmbd(**dict(POS, img_resolution=[16, 24], channel_mult=[1, 2])).eval()
    _randomize(net)
    grid = net.pos_embd
    # P = 2 patches of 8x8 at (row 0, col 8) and (row 8, col 16); B = 3 copies.
    corners = [(0, 8), (8, 16)]
    rows = torch.arange(8)[:, None].expand(8, 8)
    cols = torch.arange(8)[None, :].expand(8, 8)
    global_index = torch.stack([torch.stack([rows + r, cols + c]) for r, c in corners])
    x = torch.zeros(6, 3, 8, 8)
    got = net.positional_embedding_indexing(x, global_index)
    assert got.shape == (6, 4, 8, 8)
    for i in range(6):
        r, c = corners[i % 2]
        torch.testing.assert_close(got[i], grid[:, r:r + 8, c:c + 8], rtol=0, atol=0)
    full = net.positional_embedding_indexing(torch.zeros(2, 3, 16, 24))
    torch.testing.assert_close(full[1], grid, rtol=0, atol=0)
    # The forward pass of a patch is the forward pass with that grid slice given explicitly.
    sel = net(x[:2], torch.ones(2), None, global_index=global_index)
    via_selector = net(x[:2], torch.ones(2), None,
                       embedding_selector=lambda g: torch.stack([g[:, :8, 8:16], g[:, 8:, 16:]]))
    assert sel.abs().mean() > 1e-2
    torch.testing.assert_close(sel, via_selector, rtol=1e-5, atol=1e-6)


def test_sinusoidal_grid_is_the_closed_form():
    h, w = 6, 10
    g = positional_grid("sinusoidal", 4, h, w)
    u = torch.linspace(0, 2 * math.pi, w, dtype=torch.float64)
    v = torch.linspace(0, 2 * math.pi, h, dtype=torch.float64)
    expect = torch.stack([u.sin()[None].expand(h, w), v.sin()[:, None].expand(h, w),
                          u.cos()[None].expand(h, w), v.cos()[:, None].expand(h, w)]).float()
    torch.testing.assert_close(g, expect, rtol=0, atol=1e-7)
    # x-components vary along the width, y-components along the height (the PR #1096 order).
    assert torch.all(g[0] == g[0, :1]) and torch.all(g[1] == g[1, :, :1])
    legacy = sinusoidal_grid(2, h, w)  # bands 2**linspace(0, 2, 2) = 1, 4
    torch.testing.assert_close(legacy[4], (4 * u).sin()[None].expand(h, w).float(), rtol=0, atol=1e-6)
    octave = sinusoidal_grid(2, h, w, octave=True)  # bands 1, 2
    torch.testing.assert_close(octave[4], (2 * u).sin()[None].expand(h, w).float(), rtol=0, atol=1e-6)


def _randomize(net: torch.nn.Module, seed: int = 1) -> None:
    """O(1) weights everywhere (the zero-ish init would hide wiring mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1)
                    + (1.0 if name.endswith("norm.weight") or "norm0.weight" in name else 0.0))


def _write_mdlus(path, args, state):
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.pt", buf.getvalue())
        z.writestr("args.json", json.dumps({"__name__": "SongUNetPosEmbd",
                                            "__module__": "physicsnemo.models.diffusion_unets",
                                            "__args__": args}))
        z.writestr("metadata.json", json.dumps({"mdlus_file_version": "0.2.0"}))


def test_load_physicsnemo_roundtrip_and_mismatch(tmp_path):
    args = dict(POS_LEARN, model_channels=8)
    net = SongUNetPosEmbd(**args)
    _randomize(net)
    _write_mdlus(tmp_path / "a.mdlus", args, net.state_dict())
    loaded = load_physicsnemo(tmp_path / "a.mdlus")
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    torch.save({"args": dict(args, arch="SongUNetPosEmbd"), "state_dict": net.state_dict()},
               tmp_path / "a.pt")
    assert isinstance(load_physicsnemo(tmp_path / "a.pt"), SongUNetPosEmbd)
    bad = dict(net.state_dict())
    bad.pop("map_layer0.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["enc.32x32_conv.weight"] = torch.zeros(8, 1, 3, 3)
    _write_mdlus(tmp_path / "b.mdlus", args, bad)
    with pytest.raises(CheckpointMismatch) as e:
        load_physicsnemo(tmp_path / "b.mdlus")
    msg = str(e.value)
    assert "missing: map_layer0.bias" in msg and "unexpected: extra.weight" in msg
    assert "shape: enc.32x32_conv.weight" in msg


def test_load_refuses_pickled_objects(tmp_path):
    torch.save({"args": {"arch": "SongUNet"}, "state_dict": {}, "obj": _Evil()}, tmp_path / "e.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_physicsnemo(tmp_path / "e.pt")


class _Evil:
    pass


def test_compiles_without_graph_breaks():
    net = SongUNetPosEmbd(**dict(SMALL, in_channels=3 + 4, checkpoint_level=1))
    x, sigma = torch.randn(2, 3, 16, 16), torch.rand(2) + 0.1
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, sigma, None), net(x, sigma, None), rtol=0, atol=0)
