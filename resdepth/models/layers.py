"""Building blocks of the DDPM++ U-Net, with PhysicsNeMo 2.2.2's parameter and buffer names.

Every layer registers the same parameters and persistent buffers, in the same order and with the
same initialisation draws, as its PhysicsNeMo counterpart, so a state dict moves between the two
unchanged and ``torch.manual_seed(s)`` builds identical weights in both. The forward passes are
written for speed: resampling with the box filter ``[1, 1]`` becomes ``avg_pool2d`` / nearest
upsampling, normalisation is ``F.group_norm`` with the activation applied right after, attention
is ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "relu": F.relu, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "gelu": F.gelu, "elu": F.elu,
}


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """A tensor drawn as in EDM / PhysicsNeMo (same distribution and same RNG consumption)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"invalid init mode {mode!r}")


def _like(t: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    """``t`` in ``x``'s dtype (weights follow the activations, as PhysicsNeMo does without AMP).

    Under autocast the weights are left alone: autocast casts them (and the activations) to the
    low precision for convolutions and matmuls; casting them to ``x``'s dtype first would turn a
    bf16 run back into fp32 maths.
    """
    if t is None or t.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return t
    return t.to(x.dtype)


class Linear(torch.nn.Module):
    """Fully connected layer with EDM initialisation (``weight``, ``bias``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        kw = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **kw) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **kw) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _like(self.weight, x), _like(self.bias, x))


class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up/down-sampling by a separable FIR filter.

    ``kernel=0`` gives a pure resampling layer without weights. The filter is kept as the
    persistent buffer ``resample_filter`` (as in PhysicsNeMo) whenever ``up`` or ``down`` is set.
    ``fused_resample`` convolves before down-sampling (and after up-sampling), like the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter: Sequence[int] = (1, 1),
                 fused_resample: bool = False, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("Conv2d: 'up' and 'down' cannot both be set")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        kw = dict(mode=init_mode, fan_in=in_channels * kernel * kernel,
                  fan_out=out_channels * kernel * kernel)
        self.weight = (torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **kw)
                                          * init_weight) if kernel else None)
        self.bias = (torch.nn.Parameter(weight_init([out_channels], **kw) * init_bias)
                     if kernel and bias else None)
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)
        # The box filter is plain 2x2 average pooling / nearest upsampling: much faster on CPU.
        self._box = list(resample_filter) == [1, 1]

    def _down(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        if self._box:
            return F.avg_pool2d(x, 2)
        f = _like(self.resample_filter, x)
        return F.conv2d(x, f.expand(x.shape[1], 1, -1, -1), groups=x.shape[1], stride=2, padding=padding)

    def _up(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        if self._box:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        f = _like(self.resample_filter, x) * 4
        return F.conv_transpose2d(x, f.expand(x.shape[1], 1, -1, -1), groups=x.shape[1],
                                  stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = _like(self.weight, x), _like(self.bias, x)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._down(x, 0)
            return x if b is None else x + b.reshape(1, -1, 1, 1)
        if self.fused_resample and self.up and w is not None:
            x = self._up(x, max(f_pad - w_pad, 0))
            return F.conv2d(x, w, b, padding=max(w_pad - f_pad, 0))
        if self.up:
            x = self._up(x, f_pad)
        if self.down:
            x = self._down(x, f_pad)
        if w is not None:
            x = F.conv2d(x, w, b, padding=w_pad)
        elif b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


def group_norm_groups(num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Number of groups PhysicsNeMo uses: at most 32, at least 4 channels per group."""
    groups = min(num_groups, (num_channels + min_channels_per_group - 1) // min_channels_per_group)
    if num_channels % groups != 0:
        raise ValueError(f"GroupNorm: {num_channels} channels do not split into {groups} groups")
    return groups


class GroupNorm(torch.nn.Module):
    """Group normalisation (``weight``, ``bias``) with an optional fused activation.

    In eval mode PhysicsNeMo normalises by the *unbiased* group variance (``Tensor.var``) while
    training uses ``F.group_norm`` (biased). We reproduce that exactly, so imported checkpoints
    give the reference's outputs, through one rescaled ``F.group_norm``:
    ``(x - m) / sqrt(var * n/(n-1) + eps) = s (x - m) / sqrt(var + eps s^2)`` with
    ``s = sqrt((n-1)/n)``.
    """

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5, act: Optional[str] = None):
        super().__init__()
        self.num_groups = group_norm_groups(num_channels, num_groups, min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))
        self.act = act.lower() if act else None
        if self.act is not None and self.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")

        self._apex: list = []  # NVIDIA Apex's fused NHWC group norm, kept out of the state dict

    def use_apex(self) -> None:
        """Run training-mode CUDA forwards through Apex's fused NHWC kernel (norm + activation in
        one pass, bf16 in and out), sharing this module's ``weight`` and ``bias``."""
        try:
            from apex.contrib.group_norm import GroupNorm as ApexGroupNorm
        except ImportError as e:
            raise ImportError("use_apex_gn=True needs NVIDIA Apex built with its contrib group_norm "
                              "extension (pip install apex with --group_norm); it is not "
                              "installed") from e
        gn = ApexGroupNorm(self.num_groups, self.weight.shape[0], eps=self.eps, affine=True,
                           act=self.act or "")
        gn.weight, gn.bias = self.weight, self.bias  # the same Parameter objects
        self._apex = [gn]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._apex and self.training and x.is_cuda:
            if torch.is_autocast_enabled("cuda"):
                x = x.to(torch.get_autocast_dtype("cuda"))
            return self._apex[0](x.contiguous(memory_format=torch.channels_last))
        w, b = _like(self.weight, x), _like(self.bias, x)
        if self.training:
            x = F.group_norm(x, self.num_groups, w, b, self.eps)
        else:
            n = (x.shape[1] // self.num_groups) * x.shape[2] * x.shape[3]
            s2 = (n - 1) / n if n > 1 else 1.0
            x = F.group_norm(x, self.num_groups, w * math.sqrt(s2), b, self.eps * s2)
        return ACTIVATIONS[self.act](x) if self.act is not None else x


class PositionalEmbedding(torch.nn.Module):
    """Transformer-style sinusoidal embedding of the noise level (persistent buffer ``freqs``).

    Returns ``[cos, sin]`` like the reference; ``SongUNet`` swaps the halves.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint
        half = num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32) / (half - (1 if endpoint else 0))
        self.register_buffer("freqs", (1 / max_positions) ** freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, _like(self.freqs, x))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of the noise level (persistent buffer ``freqs``), ``[cos, sin]``."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi) * _like(self.freqs, x))
        return torch.cat([x.cos(), x.sin()], dim=1)


class Attention(torch.nn.Module):
    """Multi-head self-attention over pixels: ``norm``, ``qkv`` (1x1 conv), ``proj``, residual.

    The ``qkv`` output channels are laid out as ``(head, channel, {q,k,v})``, as in the reference.
    """

    def __init__(self, out_channels: int, num_heads: int, eps: float = 1e-5,
                 init: Optional[dict[str, Any]] = None, init_zero: Optional[dict[str, Any]] = None,
                 init_attn: Optional[dict[str, Any]] = None):
        super().__init__()
        if not isinstance(num_heads, int) or num_heads <= 0 or out_channels % num_heads:
            raise ValueError(f"Attention: {out_channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = GroupNorm(out_channels, eps=eps)
        self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                          **(init_attn if init_attn is not None else (init or {})))
        self.proj = Conv2d(out_channels, out_channels, kernel=1,
                           **(init_zero if init_zero is not None else dict(init_weight=0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, self.num_heads, c // self.num_heads, 3, h * w)
        # contiguous rows: the fused (flash / memory-efficient) kernels need a unit last stride and
        # otherwise fall back to the math path, which holds the whole HW x HW matrix in memory
        q, k, v = qkv.permute(3, 0, 1, 4, 2).contiguous().unbind(0)  # each (B, heads, HW, C/heads)
        a = F.scaled_dot_product_attention(q, k, v)  # default scale is 1/sqrt(C/heads)
        return self.proj(a.transpose(-1, -2).reshape(b, c, h, w)).add_(x)


class UNetBlock(torch.nn.Module):
    """Residual block of the U-Net: norm-act-conv, noise-embedding shift (or scale+shift),
    norm-act-dropout-conv, skip connection, optional self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: Optional[int] = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0,
                 eps: float = 1e-5, resample_filter: Sequence[int] = (1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True,
                 init: Optional[dict[str, Any]] = None, init_zero: Optional[dict[str, Any]] = None,
                 init_attn: Optional[dict[str, Any]] = None, act: str = "silu"):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else (
            num_heads if num_heads is not None else out_channels // channels_per_head)
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.act = ACTIVATIONS[act.lower()]
        self.norm0 = GroupNorm(in_channels, eps=eps, act=act)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps, act=None if adaptive_scale else act)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        self.attn = (Attention(out_channels, self.num_heads, eps=eps, init=init, init_zero=init_zero,
                               init_attn=init_attn) if attention else None)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(self.norm0(x))
        params = self.affine(emb).to(x.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = self.act(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = self.norm1(x.add_(params))  # conv outputs are not saved for backward: in place
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig).mul_(self.skip_scale)
        if self.attn is not None:
            x = self.attn(x).mul_(self.skip_scale)
        return x
