"""Ensemble members and images sampled together, ``max_rows`` at a time: the same ensemble for
any batching (each row draws from its own generator)."""
import pytest
import torch

from resdepth.diffusion.patching import GridPatching
from resdepth.models.precond import EDMResidualNet, RegressionNet
from resdepth.diffusion.sampler import generate_ensemble
from tests.diffusion.toys import ConvUNet, PointUNet


@pytest.mark.parametrize("unet", ["point", "conv"])
@pytest.mark.parametrize("sampler", ["stochastic", "deterministic"])
def test_member_batching_does_not_change_the_ensemble(unet, sampler):
    torch.manual_seed(0)
    # Rounding only may differ with the batch: convolutions pick batch-size dependent kernels, and
    # elementwise kernels round their vectorised body and scalar tail differently (fused
    # multiply-add; 2e-5 measured on an AVX-512 CPU). A member drawing from the wrong generator
    # differs by the noise itself, orders of magnitude more.
    if unet == "point":
        reg, res, tol = RegressionNet(PointUNet(3)), EDMResidualNet(PointUNet(3, seed=1)), 1e-4
    else:
        reg, res, tol = RegressionNet(ConvUNet(3)).eval(), EDMResidualNet(ConvUNet(3)).eval(), 1e-4
    cond = torch.randn(3, 2, 12, 10, generator=torch.Generator().manual_seed(0))
    keys = ["a/0", "a/1", "b/7"]
    kw = dict(seed=5, members=4, num_steps=4, S_churn=10.0, sampler=sampler, return_members=True)
    one_by_one = generate_ensemble(res, reg, cond, keys, max_rows=1, **kw)
    for rows in (5, None):
        got = generate_ensemble(res, reg, cond, keys, max_rows=rows, **kw)
        for k in ("members", "mean", "std", "regression"):
            torch.testing.assert_close(got[k], one_by_one[k], rtol=tol, atol=tol)
    assert one_by_one["members"].shape == (3, 4, 1, 12, 10)
    assert not torch.equal(one_by_one["members"][:, 0], one_by_one["members"][:, 1])


def test_member_batching_with_patches():
    reg, res = RegressionNet(PointUNet(3)), EDMResidualNet(PointUNet(4, seed=1))
    cond = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(seed=1, members=3, num_steps=3, S_churn=5.0, return_members=True,
              patch=GridPatching((16, 16), (8, 8), overlap_pix=2, boundary_pix=1))
    a = generate_ensemble(res, reg, cond, ["x", "y"], max_rows=2, **kw)
    b = generate_ensemble(res, reg, cond, ["x", "y"], **kw)
    assert torch.equal(a["members"], b["members"])
