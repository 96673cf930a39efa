"""Residual diffusion (CorrDiff recipe) for depth: the losses and the samplers.

The wrapped nets they take (RegressionNet, EDMResidualNet) live in ``resdepth.models.precond``.

``loss``      RegressionLoss (masked MSE) and ResidualLoss (EDM loss on depth - mean).
``sampler``   EDM stochastic / deterministic samplers and ``generate_ensemble``.
``patching``  grid patches for large images, random patches for training.
"""
