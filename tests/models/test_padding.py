"""Frames of any size: padded to the U-Net's multiple, cropped back, padding kept out of the losses;
crops and patches cut the positional grid at their place; attention levels named by height."""
import pytest
import torch

from resdepth.diffusion.loss import RegressionLoss, ResidualLoss, masked_mean
from resdepth.diffusion.patching import crop_index
from resdepth.models.precond import EDMResidualNet, RegressionNet
from resdepth.models.build import arch_spec, build_net
from resdepth.models.config import ModelConfig
from resdepth.models.padding import extend_index, padded_size, unet_resolution

H, W = 13, 22  # neither a multiple of 8


class PaddedOnlyUNet(torch.nn.Module):
    """Takes only multiples of 8 and writes NaN into every pixel beyond the real ``H x W`` frame, so
    any padded pixel that reached a loss or a gradient would show as NaN."""

    input_multiple = 8

    def __init__(self, in_channels: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.1, 0.5, in_channels))
        self.shapes: list[tuple[int, int]] = []

    def forward(self, x, noise_labels, class_labels=None):
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0, x.shape
        self.shapes.append(tuple(x.shape[-2:]))
        out = (x * self.weight.view(1, -1, 1, 1)).sum(1, keepdim=True)
        pad = torch.zeros_like(out, dtype=torch.bool)
        pad[..., H:, :] = True
        pad[..., :, W:] = True
        return torch.where(pad, torch.full_like(out, float("nan")), out)


def test_padded_pixels_never_enter_loss_or_gradient():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 2, H, W, generator=g)
    depth = torch.rand(3, 1, H, W, generator=g)
    mask = (torch.rand(3, 1, H, W, generator=g) > 0.3).float()
    reg = RegressionNet(PaddedOnlyUNet(3))
    pred = reg(cond)
    assert pred.shape == (3, 1, H, W) and torch.isfinite(pred).all()
    assert reg.unet.shapes == [(16, 24)]
    loss = RegressionLoss()(reg, depth, cond, mask)
    expect = masked_mean((pred - depth) ** 2, mask.bool())
    torch.testing.assert_close(loss, expect)
    loss.backward()
    assert torch.isfinite(reg.unet.weight.grad).all() and reg.unet.weight.grad.abs().sum() > 0

    res = EDMResidualNet(PaddedOnlyUNet(3))
    loss = ResidualLoss(reg)(res, depth, cond, mask, generator=g)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(res.unet.weight.grad).all()


def test_any_size_through_real_unets():
    cfg = ModelConfig(model_channels=8, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4],
                      arch="SongUNetPosEmbd", stage="diffusion", N_grid_channels=4)
    spec = arch_spec(cfg, "diffusion", 3, [H, W])
    assert spec["unet"]["img_resolution"] == [16, 24]
    net = build_net(spec)
    x = torch.randn(2, 1, H, W)
    assert net(x, 0.5, torch.randn(2, 3, H, W)).shape == (2, 1, H, W)
    # a crop of the frame, its positional grid cut where the crop sits
    origin = torch.tensor([[2, 5], [0, 9]])
    out = net(torch.randn(2, 1, 9, 11), 0.5, torch.randn(2, 3, 9, 11),
              global_index=crop_index(origin, (9, 11)))
    assert out.shape == (2, 1, 9, 11)
    reg = build_net(arch_spec(ModelConfig(model_channels=8, channel_mult=[1, 2, 2], num_blocks=1,
                                          attn_resolutions=[]), "regression", 3, [H, W]))
    assert reg(torch.randn(1, 3, 260, 346)).shape == (1, 1, 260, 346)


def test_crop_index_extended_into_the_padding():
    from resdepth.models.song_unet import SongUNetPosEmbd

    unet = SongUNetPosEmbd(img_resolution=[16, 24], in_channels=3, out_channels=1, model_channels=8,
                           channel_mult=[1, 2, 2, 2], num_blocks=1, attn_resolutions=[],
                           gridtype="test", N_grid_channels=2)
    origin = torch.tensor([[4, 10], [0, 0]])
    index = extend_index(crop_index(origin, (9, 11)), (16, 16), (16, 24))
    grid = unet.positional_embedding_indexing(torch.zeros(2, 1, 16, 16), index)  # rows, cols
    rows = torch.arange(16)[:, None].expand(16, 16)
    cols = torch.arange(16)[None, :].expand(16, 16)
    torch.testing.assert_close(grid[0, 0], (rows + 4).clamp(max=15).float())
    torch.testing.assert_close(grid[0, 1], (cols + 10).clamp(max=23).float())
    torch.testing.assert_close(grid[1, 0], rows.float())
    with pytest.raises(ValueError, match="global_index"):
        unet.positional_embedding_indexing(torch.zeros(1, 1, 8, 8))


def test_attention_levels_by_height_and_bottleneck_switch():
    assert padded_size(260, 8) == 264 and padded_size(346, 8) == 352 and padded_size(4, 8) == 4
    assert unet_resolution([480, 640], 4) == [480, 640]
    cfg = ModelConfig(model_channels=8, channel_mult=[1, 2, 2, 2], num_blocks=1, attn_resolutions=[33])
    spec = arch_spec(cfg, "regression", 5, [260, 346])
    assert spec["unet"]["img_resolution"] == [264, 352] and "bottleneck_attention" not in spec["unet"]
    net = build_net(spec).unet
    with_attn = sorted(n for n, m in net.enc.items() if getattr(m, "attn", None) is not None)
    assert with_attn == ["33x33_block0"]
    with pytest.raises(ValueError, match=r"choose from \[264, 132, 66, 33\]"):
        arch_spec(ModelConfig(channel_mult=[1, 2, 2, 2], attn_resolutions=[16]), "regression", 5,
                  [260, 346])
    off = ModelConfig(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
                      bottleneck_attention=False)
    net = build_net(arch_spec(off, "regression", 5, [20, 30])).unet
    assert all(getattr(m, "attn", None) is None for m in [*net.enc.values(), *net.dec.values()])
