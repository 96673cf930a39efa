"""Residual diffusion (CorrDiff recipe) for depth: the wrapped nets, the losses and the samplers.

``precond``   RegressionNet (stage 1 mean) and EDMResidualNet (stage 2 denoiser), input widths.
``loss``      RegressionLoss (masked MSE) and ResidualLoss (EDM loss on depth - mean).
``sampler``   EDM stochastic / deterministic samplers and ``generate_ensemble``.
``patching``  grid patches for large images, random patches for training.
"""
