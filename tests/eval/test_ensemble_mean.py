"""One definition of the ensemble mean (normalised depth space) in the samplers, the evaluator
and the TensorBoard previews."""
from types import SimpleNamespace

import pytest
import torch

from resdepth.data.norm import DepthNorm
from resdepth.diffusion import sampler
from resdepth.diffusion.config import DiffusionConfig
from resdepth.models.precond import EDMResidualNet, RegressionNet
from resdepth.eval.config import EvalConfig
from resdepth.infer.nets import Nets
from resdepth.infer.sampler import noise_baseline, predict
from resdepth.train.stage import predict_panels
from tests.diffusion.toys import PointUNet

KEYS = ["s/000000", "s/000001"]


def _nets():
    reg = RegressionNet(PointUNet(3)).eval()
    res = EDMResidualNet(PointUNet(4, seed=1), sigma_data=0.1).eval()
    meta = {"spec": {"hr_mean_conditioning": True}, "residual_std": 0.1, "sigma_max": 2.0}
    return Nets(reg, {"data": {"bins": 2, "height": 6, "width": 5}}, res, meta, DepthNorm())


def _three_places(nets, cond):
    cfg = EvalConfig(ensemble=3, steps=4, S_churn=2.0)
    ev = predict(cfg, nets, cond, KEYS)
    gen = sampler.generate_ensemble(nets.diffusion, nets.regression, cond, KEYS, seed=0, members=3,
                                    num_steps=4, **{**cfg.sampler_kwargs(), "sigma_max": 2.0},
                                    hr_mean_conditioning=True, return_members=True)
    tcfg = SimpleNamespace(model=SimpleNamespace(stage="diffusion", hr_mean_conditioning=True),
                           diffusion=DiffusionConfig(num_steps=4, sigma_max=2.0), run=SimpleNamespace(seed=0))
    panel = predict_panels(tcfg, nets.diffusion, nets.regression, {"events": cond, "key": KEYS},
                           nets.norm)
    return ev, gen, panel


def test_the_mean_is_taken_in_normalised_space_everywhere():
    nets, cond = _nets(), torch.randn(2, 2, 6, 5, generator=torch.Generator().manual_seed(0)) * 0.3
    ev, gen, _ = _three_places(nets, cond)
    torch.testing.assert_close(gen["mean"], gen["members"].mean(1))
    torch.testing.assert_close(ev["mean"], nets.norm.denormalize(gen["members"].mean(1)))
    torch.testing.assert_close(ev["members"], nets.norm.denormalize(gen["members"]))
    # not the mean in metres: with a log normalisation that is larger (arithmetic >= geometric)
    assert not torch.allclose(ev["mean"], ev["members"].mean(1))


def test_samplers_evaluator_and_previews_share_one_definition(monkeypatch):
    # Swap the one definition for a constant: every place must follow it.
    monkeypatch.setattr(sampler, "ensemble_mean", lambda m, dim=1: torch.full_like(m.mean(dim), 0.25))
    nets, cond = _nets(), torch.randn(2, 2, 6, 5)
    ev, gen, panel = _three_places(nets, cond)
    expected = nets.norm.denormalize(torch.tensor(0.25))
    assert torch.all(gen["mean"] == 0.25)
    torch.testing.assert_close(ev["mean"], expected.expand_as(ev["mean"]))
    torch.testing.assert_close(panel, expected.expand_as(panel))


def test_noise_baseline_members_are_per_key_and_member():
    reg = torch.zeros(2, 1, 4, 4)
    a = noise_baseline(reg, KEYS, seed=0, members=3, std=0.1)
    b = noise_baseline(reg[1:], KEYS[1:], seed=0, members=3, std=0.1)
    assert a.shape == (2, 3, 1, 4, 4) and torch.equal(a[1], b[0])
    assert float(a.std()) == pytest.approx(0.1, rel=0.3)
