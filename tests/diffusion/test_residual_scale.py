"""The training noise levels follow the measured residual scale: P_mean = ln(sigma_data) + offset."""
import math

import pytest

from resdepth.diffusion.config import (CORRDIFF_P_MEAN_OFFSET, P_MEAN_OFFSET, DiffusionConfig,
                                       resolve_residual_scale)


def test_default_offset_is_edms():
    cfg = DiffusionConfig()
    got = resolve_residual_scale(cfg, 0.1)
    assert got["P_mean"] == pytest.approx(math.log(0.1) - 1.2 - math.log(0.5))
    assert got["sigma_data"] == 0.1 and got["sigma_max"] == pytest.approx(2.0)
    # at EDM's own sigma_data the offset gives EDM's P_mean
    assert math.log(0.5) + P_MEAN_OFFSET == pytest.approx(-1.2)


def test_offset_moves_the_training_noise_relative_to_sigma_data():
    cfg = DiffusionConfig(P_mean_offset=CORRDIFF_P_MEAN_OFFSET)
    got = resolve_residual_scale(cfg, 0.1127)
    assert got["P_mean"] == pytest.approx(math.log(0.1127) + math.log(2))
    assert cfg.P_mean == got["P_mean"]
    # CorrDiff's residual loss: P_mean 0 at sigma_data 0.5
    assert math.log(0.5) + CORRDIFF_P_MEAN_OFFSET == pytest.approx(0.0)


def test_an_explicit_P_mean_wins_over_the_offset():
    cfg = DiffusionConfig(P_mean=-2.0, P_mean_offset=CORRDIFF_P_MEAN_OFFSET)
    assert resolve_residual_scale(cfg, 0.1)["P_mean"] == -2.0
