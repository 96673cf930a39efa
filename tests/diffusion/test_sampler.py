import pytest
import torch

from resdepth.diffusion.patching import GridPatching
from resdepth.models.precond import EDMResidualNet, RegressionNet
from resdepth.diffusion.sampler import (StackedRandomGenerator, deterministic_sampler,
                                        edm_sigma_steps, generate_ensemble, sample_seed,
                                        stochastic_sampler)
from tests.diffusion.toys import ConvUNet, GaussianDenoiser, PointUNet

MU, SD = 1.0, 0.5


def _latents(seed=0, shape=(8, 1, 32, 32)):  # 8192 independent pixels
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _assert_gaussian(x):
    assert x.mean().item() == pytest.approx(MU, rel=0.02)
    assert x.std().item() == pytest.approx(SD, rel=0.02)


def test_schedule():
    t = edm_sigma_steps(18, 0.002, 80.0, 7.0)
    assert t.dtype == torch.float64 and len(t) == 19
    assert t[0].item() == pytest.approx(80.0) and t[17].item() == pytest.approx(0.002) and t[18] == 0
    assert (t[1:] < t[:-1]).all()


def test_stochastic_sampler_reproduces_gaussian_data():
    g = torch.Generator().manual_seed(1)
    x = stochastic_sampler(GaussianDenoiser(MU, SD), _latents(), None, num_steps=64, S_churn=40,
                           S_min=0.05, S_max=50, randn_like=lambda v: torch.randn(
                               v.shape, generator=g, dtype=v.dtype))
    _assert_gaussian(x)


@pytest.mark.parametrize("solver,steps", [("heun", 64), ("euler", 512)])
def test_deterministic_sampler_reproduces_gaussian_data(solver, steps):
    _assert_gaussian(deterministic_sampler(GaussianDenoiser(MU, SD), _latents(), None,
                                           num_steps=steps, solver=solver))


def test_churn_is_capped_and_only_in_range():
    calls = []

    def randn_like(v):
        calls.append(1)
        return torch.zeros_like(v)
    stochastic_sampler(GaussianDenoiser(0, 1), _latents(shape=(1, 1, 2, 2)), None, num_steps=10,
                       S_churn=1e6, S_min=1.0, S_max=10.0, randn_like=randn_like)
    t = edm_sigma_steps(10)[:-1]
    assert len(calls) == int(((t >= 1.0) & (t <= 10.0)).sum())


def test_patched_sampling_equals_whole_image_for_pointwise_net():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 2, 24, 20, generator=g)
    net = EDMResidualNet(PointUNet(used_channels=3), sigma_data=0.5)  # ignores the resized channels
    patching = GridPatching((24, 20), (8, 8), overlap_pix=2, boundary_pix=2)
    kw = dict(num_steps=6, S_churn=5.0)
    rng = StackedRandomGenerator([1, 2])
    full = stochastic_sampler(net, rng.randn([2, 1, 24, 20]), cond, randn_like=rng.randn_like, **kw)
    rng = StackedRandomGenerator([1, 2])
    patched = stochastic_sampler(net, rng.randn([2, 1, 24, 20]), cond, randn_like=rng.randn_like,
                                 patching=patching, global_cond=cond, **kw)
    assert net.unet.calls[-1]["x"].shape == (2 * patching.num_patches, 5, 8, 8)
    assert net.unet.calls[-1]["global_index"] is not None
    torch.testing.assert_close(patched, full, rtol=1e-5, atol=1e-5)
    det = deterministic_sampler(net, full, cond, num_steps=4)
    det_p = deterministic_sampler(net, full, cond, num_steps=4, patching=patching, global_cond=cond)
    torch.testing.assert_close(det_p, det, rtol=1e-5, atol=1e-5)


def test_sample_seed_is_stable():
    assert sample_seed(0, "seq_a/000010", 0) == sample_seed(0, "seq_a/000010", 0)
    assert sample_seed(0, "seq_a/000010", 0) == 4800321025114360100
    assert len({sample_seed(s, k, m) for s in (0, 1) for k in ("a", "b") for m in (0, 1)}) == 8


def _nets(cond_channels=2, hr_mean=False):
    torch.manual_seed(0)
    reg = RegressionNet(ConvUNet(1 + cond_channels)).eval()
    res = EDMResidualNet(ConvUNet(1 + cond_channels + int(hr_mean))).eval()
    return reg, res


@pytest.mark.parametrize("unet", ["point", "conv"])
def test_a_sample_does_not_depend_on_its_batch(unet):
    # Rounding only may differ with the batch: convolutions pick batch-size dependent kernels, and
    # elementwise kernels round their vectorised body and scalar tail differently (3e-6 measured on
    # an AVX-512 CPU); a row drawing another row's noise differs by the noise itself.
    if unet == "point":
        reg, res = RegressionNet(PointUNet(3)), EDMResidualNet(PointUNet(4, seed=1))
    else:
        reg, res = _nets(hr_mean=True)
    tol = 1e-5
    cond = torch.randn(7, 2, 12, 10, generator=torch.Generator().manual_seed(0))
    keys = [f"seq/{i:06d}" for i in range(7)]
    kw = dict(seed=3, members=2, num_steps=5, S_churn=10.0, hr_mean_conditioning=True,
              return_members=True)
    batch = generate_ensemble(res, reg, cond, keys, **kw)
    alone = generate_ensemble(res, reg, cond[4:5], keys[4:5], **kw)
    assert batch["members"].shape == (7, 2, 1, 12, 10)
    torch.testing.assert_close(alone["members"][0], batch["members"][4], rtol=0, atol=tol)
    assert not torch.equal(batch["members"][:, 0], batch["members"][:, 1])  # members differ
    again = generate_ensemble(res, reg, cond, keys, **kw)
    assert torch.equal(again["members"], batch["members"])
    torch.testing.assert_close(batch["mean"], batch["members"].mean(1))
    torch.testing.assert_close(batch["std"], batch["members"].std(1))


def test_generate_ensemble_regression_only_and_residual_only():
    reg, res = _nets()
    cond = torch.randn(2, 2, 8, 8)
    only_reg = generate_ensemble(None, reg, cond, ["a", "b"], seed=0, members=3, return_members=True)
    torch.testing.assert_close(only_reg["mean"], reg(cond))
    assert torch.equal(only_reg["std"], torch.zeros(2, 1, 8, 8))
    assert only_reg["members"].shape == (2, 3, 1, 8, 8)
    only_res = generate_ensemble(res, None, cond, ["a", "b"], seed=0, members=1, num_steps=3,
                                 sampler="deterministic")
    assert torch.equal(only_res["regression"], torch.zeros(2, 1, 8, 8))
    assert "members" not in only_res and torch.equal(only_res["std"], torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="sampler"):
        generate_ensemble(res, reg, cond, ["a", "b"], seed=0, members=1, sampler="ddim")


def test_generate_ensemble_with_patches():
    torch.manual_seed(0)
    reg = RegressionNet(ConvUNet(3))
    res = EDMResidualNet(ConvUNet(1 + 2 + 2))  # trained on patches: + resized whole condition
    cond = torch.randn(1, 2, 16, 16)
    out = generate_ensemble(res, reg, cond, ["k"], seed=0, members=2, num_steps=3,
                            patch=GridPatching((16, 16), (8, 8), overlap_pix=2, boundary_pix=1))
    assert out["mean"].shape == (1, 1, 16, 16) and torch.isfinite(out["std"]).all()


class _Wrapper(torch.nn.Module):
    """Like DistributedDataParallel: forwards calls, keeps the net as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_generate_ensemble_accepts_wrapped_nets():
    _, res = _nets()
    cond = torch.randn(1, 2, 8, 8)
    a = generate_ensemble(_Wrapper(res), None, cond, ["k"], seed=0, members=2, num_steps=3)
    b = generate_ensemble(res, None, cond, ["k"], seed=0, members=2, num_steps=3)
    assert torch.equal(a["mean"], b["mean"])
