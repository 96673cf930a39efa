"""The residual net's denoised zero residual D(0; sigma) as a point estimate."""
import pytest
import torch
from torch import nn

from resdepth.diffusion.patching import GridPatching
from resdepth.diffusion.sampler import denoised_mean, generate_ensemble
from resdepth.models.precond import EDMResidualNet, RegressionNet
from tests.diffusion.toys import GaussianDenoiser, PointUNet


class ConstMean(nn.Module):
    def forward(self, cond):
        return torch.full_like(cond[:, :1], 0.25)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_exact_denoiser_gives_the_shrunk_posterior_mean(sigma):
    # residuals N(mu, sd^2): E[r | r + sigma n = 0] = mu sigma^2 / (sd^2 + sigma^2)
    mu, sd = 0.3, 0.1
    cond = torch.randn(2, 2, 4, 5)
    out = denoised_mean(GaussianDenoiser(mu, sd), ConstMean(), cond, sigma)
    expect = 0.25 + mu * sigma ** 2 / (sd ** 2 + sigma ** 2)
    torch.testing.assert_close(out["denoised"], torch.full((2, 1, 4, 5), expect))
    assert torch.all(out["regression"] == 0.25)


class NotRun(nn.Module):
    def forward(self, cond):
        raise AssertionError("the regression net ran although its mean was given")


def test_a_given_regression_mean_is_not_computed_again():
    cond = torch.randn(2, 2, 4, 5)
    ran = denoised_mean(GaussianDenoiser(0.3, 0.1), ConstMean(), cond, 0.5)
    given = denoised_mean(GaussianDenoiser(0.3, 0.1), NotRun(), cond, 0.5,
                          mean=torch.full_like(cond[:, :1], 0.25))
    assert torch.equal(given["denoised"], ran["denoised"])


def test_large_sigma_is_where_many_members_average_to():
    # the exact denoiser's D(0; sigma) tends to the residual's mean, as the ensemble mean does
    mu, sd = 0.3, 0.1
    cond = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    big = denoised_mean(GaussianDenoiser(mu, sd), ConstMean(), cond, 100.0)["denoised"]
    ens = generate_ensemble(GaussianDenoiser(mu, sd), ConstMean(), cond, ["k"], seed=0, members=64,
                            num_steps=32, sigma_max=20.0, S_churn=0.0)["mean"]
    assert big.mean().item() == pytest.approx(0.25 + mu, abs=1e-4)
    assert ens.mean().item() == pytest.approx(big.mean().item(), abs=0.005)


def test_conditioning_and_patches_as_the_samplers_use_them():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 2, 24, 20, generator=g)
    reg = RegressionNet(PointUNet(2, seed=2))
    net = EDMResidualNet(PointUNet(used_channels=3), sigma_data=0.5)
    whole = denoised_mean(net, reg, cond, 0.5, hr_mean_conditioning=True)
    # the net saw [x = 0, regression mean, events]
    seen = net.unet.calls[-1]["x"]
    assert seen.shape == (2, 4, 24, 20)
    patching = GridPatching((24, 20), (8, 8), overlap_pix=2, boundary_pix=2)
    patched = denoised_mean(net, reg, cond, 0.5, hr_mean_conditioning=True, patch=patching)
    torch.testing.assert_close(patched["denoised"], whole["denoised"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(whole["denoised"], whole["regression"])


def test_its_noise_level_is_a_sampler_setting_of_training_and_evaluation():
    from resdepth.diffusion.config import DiffusionConfig
    from resdepth.eval.cli import parse_args

    assert DiffusionConfig().denoised_sigma == 0.5
    cfg = parse_args(["--regression", "r", "--data", "d", "--out", "o", "--denoised-sigma", "2"])
    assert cfg.denoised_sigma == 2.0
    # not a keyword of the samplers: the ensemble is drawn the same with any value
    assert "denoised_sigma" not in cfg.sampler_kwargs()
