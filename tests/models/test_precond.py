import math

import pytest
import torch

from resdepth.models.precond import (EDMResidualNet, RegressionNet, regression_in_channels,
                                        residual_in_channels)
from tests.diffusion.toys import PointUNet


def test_in_channels():
    assert regression_in_channels(5) == 6
    assert residual_in_channels(5) == 6
    assert residual_in_channels(5, hr_mean_conditioning=True) == 7
    assert residual_in_channels(5, patching=True) == 11
    assert residual_in_channels(5, img_channels=2, hr_mean_conditioning=True, patching=True) == 14


def test_edm_coefficients_by_hand():
    net = EDMResidualNet(PointUNet(3), sigma_data=0.5)
    c = net.coefficients(torch.tensor(2.0, dtype=torch.float64))
    # sigma = 2, sigma_data = 0.5: sigma^2 + sd^2 = 4.25
    assert c["c_skip"].item() == pytest.approx(0.25 / 4.25)
    assert c["c_out"].item() == pytest.approx(1.0 / math.sqrt(4.25))
    assert c["c_in"].item() == pytest.approx(1 / math.sqrt(4.25))
    assert c["c_noise"].item() == pytest.approx(math.log(2.0) / 4)


def test_residual_net_scales_x_but_not_the_condition():
    unet = PointUNet(3)
    net = EDMResidualNet(unet, sigma_data=0.5)
    x = torch.randn(2, 1, 4, 5)
    cond = torch.randn(2, 2, 4, 5)
    sigma = torch.tensor([2.0, 0.1])
    out = net(x, sigma, cond)
    seen = unet.calls[-1]
    s = sigma.view(-1, 1, 1, 1)
    c_in = 1 / (s ** 2 + 0.25).sqrt()
    torch.testing.assert_close(seen["x"][:, :1], c_in * x)
    torch.testing.assert_close(seen["x"][:, 1:], cond)          # unscaled condition
    torch.testing.assert_close(seen["noise_labels"], sigma.log() / 4)
    assert seen["global_index"] is None
    F_x = unet(seen["x"], seen["noise_labels"], None)
    expected = 0.25 / (s ** 2 + 0.25) * x + s * 0.5 / (s ** 2 + 0.25).sqrt() * F_x
    torch.testing.assert_close(out, expected)
    assert net.unet is unet and net.img_channels == 1


def test_residual_net_scalar_sigma_broadcasts():
    net = EDMResidualNet(PointUNet(3))
    x, cond = torch.randn(3, 1, 4, 4), torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(net(x, 0.7, cond), net(x, torch.full((3,), 0.7), cond))


def test_regression_net_sees_zeros_and_zero_noise_label():
    unet = PointUNet(4)
    net = RegressionNet(unet)
    cond = torch.randn(2, 3, 4, 5)
    out = net(cond)
    seen = unet.calls[-1]
    assert out.shape == (2, 1, 4, 5)
    assert torch.equal(seen["x"][:, :1], torch.zeros(2, 1, 4, 5))
    assert torch.equal(seen["x"][:, 1:], cond)
    assert torch.equal(seen["noise_labels"], torch.zeros(2))
