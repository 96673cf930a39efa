"""The diffusion core around the project's real U-Nets (tiny sizes), patches and positional grid included."""
import pytest
import torch

from resdepth.diffusion.loss import RegressionLoss, ResidualLoss
from resdepth.diffusion.patching import GridPatching
from resdepth.models.precond import (EDMResidualNet, RegressionNet, regression_in_channels,
                                        residual_in_channels)
from resdepth.diffusion.sampler import generate_ensemble

models = pytest.importorskip("resdepth.models")
if not hasattr(models, "SongUNetPosEmbd"):
    pytest.skip("resdepth.models provides no SongUNetPosEmbd", allow_module_level=True)
TINY = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
GRID = 4


def test_regression_and_patched_residual_with_song_unets():
    torch.manual_seed(0)
    cond_ch, size = 3, 16
    reg = RegressionNet(models.SongUNet(size, regression_in_channels(cond_ch), 1, **TINY))
    in_ch = residual_in_channels(cond_ch, hr_mean_conditioning=True, patching=True) + GRID
    res = EDMResidualNet(models.SongUNetPosEmbd(size, in_ch, 1, N_grid_channels=GRID, **TINY))
    depth, cond = torch.rand(2, 1, size, size), torch.randn(2, cond_ch, size, size)
    mask = torch.rand(2, 1, size, size) > 0.2
    RegressionLoss()(reg, depth, cond, mask).backward()
    reg.eval().requires_grad_(False)
    loss = ResidualLoss(reg, hr_mean_conditioning=True, patch_shape=(8, 8), patch_num=2)(
        res, depth, cond, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in res.parameters()
                                        if p.grad is not None)
    out = generate_ensemble(res.eval(), reg, cond, ["a", "b"], seed=0, members=2, num_steps=3,
                            S_churn=1.0, hr_mean_conditioning=True,
                            patch=GridPatching((size, size), (8, 8), overlap_pix=2, boundary_pix=1))
    assert out["mean"].shape == (2, 1, size, size) and torch.isfinite(out["std"]).all()
