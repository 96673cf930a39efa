import pytest
import torch
from torch import nn

from resdepth.diffusion.loss import RegressionLoss, ResidualLoss
from resdepth.diffusion.patching import take_patches
from resdepth.models.precond import EDMResidualNet, residual_in_channels
from tests.diffusion.toys import PointUNet


class Const(nn.Module):
    """A "regression net" predicting a fixed (trainable) image whatever the condition."""

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(torch.as_tensor(values, dtype=torch.float32))

    def forward(self, cond, global_index=None):
        return self.values.expand(cond.shape[0], *self.values.shape[1:])


class Recorder(nn.Module):
    """A denoiser ``D = a * x`` that keeps what it was called with."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.seen = {}

    def forward(self, x, sigma, cond, global_index=None):
        self.seen = {"x": x, "sigma": sigma, "cond": cond, "global_index": global_index}
        return self.a * x


def test_regression_loss_by_hand_and_mask():
    net = Const([[[[1.0, 2.0, 3.0]]]])
    depth = torch.tensor([[[[0.0, 2.0, float("nan")]]]])
    mask = torch.tensor([[[[1, 1, 0]]]], dtype=torch.bool)
    loss = RegressionLoss()(net, depth, torch.zeros(1, 2, 1, 3), mask)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)
    loss.backward()
    # d/dp mean((p - d)^2) over 2 valid pixels = (p - d); nothing for the masked (NaN) pixel
    torch.testing.assert_close(net.values.grad, torch.tensor([[[[1.0, 0.0, 0.0]]]]))


def test_regression_loss_all_masked_is_zero_with_grad():
    net = Const([[[[1.0, 2.0]]]])
    loss = RegressionLoss()(net, torch.full((1, 1, 1, 2), float("nan")), torch.zeros(1, 1, 1, 2),
                            torch.zeros(1, 1, 1, 2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(net.values.grad, torch.zeros(1, 1, 1, 2))


def test_edm_weight_by_hand():
    loss = ResidualLoss(None, sigma_data=0.5)
    # (sigma^2 + sd^2) / (sigma sd)^2 at sigma = 2: 4.25 / 1; at sigma = 0.5: 0.5 / 0.0625
    torch.testing.assert_close(loss.weight(torch.tensor([2.0, 0.5])), torch.tensor([4.25, 8.0]))


def _batch(n=3, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(n, 1, h, w, generator=g)
    cond = torch.randn(n, 2, h, w, generator=g)
    mask = torch.rand(n, 1, h, w, generator=g) > 0.3
    return depth, cond, mask


def test_residual_loss_matches_a_hand_computation():
    depth, cond, mask = _batch()
    mean = torch.full((1, 1, 4, 6), 0.2)
    net = Recorder()
    loss = ResidualLoss(Const(mean), P_mean=-1.2, P_std=1.2, sigma_data=0.5)(
        net, depth, cond, mask, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    sigma = (torch.randn([3, 1, 1, 1], generator=g) * 1.2 - 1.2).exp()
    y = torch.where(mask, depth - 0.2, 0.0)
    x = y + torch.randn(y.shape, generator=g) * sigma
    torch.testing.assert_close(net.seen["x"], x)
    torch.testing.assert_close(net.seen["sigma"], sigma)
    assert torch.equal(net.seen["cond"], cond)
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    expected = (weight * (0.5 * x - y) ** 2)[mask.expand_as(x)].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_masked_depth_changes_nothing_and_regression_net_stays_frozen():
    depth, cond, mask = _batch()
    reg = Const(torch.full((1, 1, 4, 6), 0.2))
    loss_fn = ResidualLoss(reg)
    net = EDMResidualNet(PointUNet(3))
    a = loss_fn(net, depth, cond, mask, generator=torch.Generator().manual_seed(1))
    garbage = torch.where(mask, depth, torch.full_like(depth, float("nan")))
    b = loss_fn(net, garbage, cond, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    b.backward()
    assert reg.values.grad is None
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    none = loss_fn(net, depth, cond, torch.zeros_like(mask), generator=torch.Generator().manual_seed(1))
    assert none.item() == 0.0


def test_hr_mean_conditioning_puts_the_mean_first():
    depth, cond, mask = _batch()
    mean = torch.rand(1, 1, 4, 6)
    net = Recorder()
    ResidualLoss(Const(mean), hr_mean_conditioning=True)(net, depth, cond, mask,
                                                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(net.seen["cond"], torch.cat([mean.expand(3, -1, -1, -1), cond], 1))


def test_patched_residual_loss_layout():
    depth, cond, mask = _batch(n=2, h=8, w=12)
    mean = torch.rand(1, 1, 8, 12)
    rec = Recorder()
    loss_fn = ResidualLoss(Const(mean), hr_mean_conditioning=True, patch_shape=(4, 6), patch_num=3)
    loss = loss_fn(rec, depth, cond, mask, generator=torch.Generator().manual_seed(0))
    index = rec.seen["global_index"]
    assert index.shape == (6, 2, 4, 6) and rec.seen["x"].shape == (6, 1, 4, 6)
    assert rec.seen["sigma"].shape == (6, 1, 1, 1)  # one noise level per patch
    full = torch.cat([mean.expand(2, -1, -1, -1), cond], 1)
    assert rec.seen["cond"].shape[1] == residual_in_channels(2, hr_mean_conditioning=True, patching=True) - 1
    torch.testing.assert_close(rec.seen["cond"][:, :3], take_patches(full, index))
    small = torch.nn.functional.interpolate(cond, size=(4, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(rec.seen["cond"][:, 3:], small.repeat_interleave(3, 0))
    assert torch.isfinite(loss)
    # and a real wrapped net of the advertised width accepts it
    width = residual_in_channels(2, hr_mean_conditioning=True, patching=True)
    net = EDMResidualNet(PointUNet(width))
    loss_fn(net, depth, cond, mask, generator=torch.Generator().manual_seed(0)).backward()
    assert net.unet.calls[-1]["x"].shape == (6, width, 4, 6)
