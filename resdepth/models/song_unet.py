"""The DDPM++ / NCSN++ U-Net of CorrDiff (``SongUNet``) and its positional-grid variant.

Constructor and forward signatures, parameter names, shapes and counts are those of NVIDIA
PhysicsNeMo 2.2.2 (``physicsnemo.models.diffusion_unets``), so a trained CorrDiff checkpoint loads
with ``resdepth.models.load_physicsnemo``; the code is a separate, pure-torch implementation.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from resdepth.models.grid import positional_grid
from resdepth.models.layers import (Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding,
                                    UNetBlock)


class SongUNet(torch.nn.Module):
    """DDPM++ U-Net (Song et al. 2021, as in EDM and CorrDiff) conditioned on the noise level.

    ``img_resolution`` is ``H`` or ``[H, W]``; inputs may have other sizes (multiples of
    ``2**(len(channel_mult)-1)``) unless ``additive_pos_embed``. ``embedding_type`` picks the
    noise embedding (``positional`` DDPM++, ``fourier`` NCSN++, ``zero`` none); ``encoder_type``
    and ``decoder_type`` add the NCSN++ skip/residual pyramids. ``checkpoint_level`` > 0 recomputes
    the blocks whose feature maps are larger than ``sqrt(H*W) >> checkpoint_level`` in the backward
    pass (the reference's rule). ``use_apex_gn`` runs the training-mode group norms on CUDA through
    NVIDIA Apex's fused NHWC kernel (an ImportError when Apex is absent; parameter names do not
    change). ``profile_mode`` and ``amp_mode`` are accepted for signature compatibility: mixed
    precision is the caller's autocast. Activations are channels-last on CPU and CUDA (oneDNN and
    cuDNN both run NHWC convolutions faster, and Apex's group norm needs it).
    """

    memory_format = torch.channels_last  # of the activations (benchmarks compare NCHW)

    def __init__(self, img_resolution: Union[Sequence[int], int], in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.10,
                 label_dropout: float = 0.0,
                 embedding_type: Literal["fourier", "positional", "zero"] = "positional",
                 channel_mult_noise: int = 1,
                 encoder_type: Literal["standard", "skip", "residual"] = "standard",
                 decoder_type: Literal["standard", "skip"] = "standard",
                 resample_filter: Sequence[int] = (1, 1), checkpoint_level: int = 0,
                 additive_pos_embed: bool = False, bottleneck_attention: bool = True,
                 use_apex_gn: bool = False, act: str = "silu", profile_mode: bool = False,
                 amp_mode: bool = False):
        _check_choice("embedding_type", embedding_type, ("fourier", "positional", "zero"))
        _check_choice("encoder_type", encoder_type, ("standard", "skip", "residual"))
        _check_choice("decoder_type", decoder_type, ("standard", "skip"))
        super().__init__()
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        self.embedding_type = embedding_type
        self.emb_channels = emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        self.img_resolution = img_resolution
        if isinstance(img_resolution, int):
            self.img_shape_y = self.img_shape_x = img_resolution
        else:
            self.img_shape_y, self.img_shape_x = int(img_resolution[0]), int(img_resolution[1])
        self.profile_mode, self.amp_mode, self.use_apex_gn = profile_mode, amp_mode, use_apex_gn
        self._num_levels = len(channel_mult)
        self._input_shape_mult = 2 ** (self._num_levels - 1)
        self.checkpoint_threshold = (math.isqrt(self.img_shape_x * self.img_shape_y)
                                     >> checkpoint_level) + 1
        self.additive_pos_embed = additive_pos_embed
        if additive_pos_embed:
            self.spatial_emb = torch.nn.Parameter(
                torch.randn(1, model_channels, self.img_shape_y, self.img_shape_x))
            torch.nn.init.trunc_normal_(self.spatial_emb, std=0.02)

        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        block_kw = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout,
                        skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=resample_filter,
                        resample_proj=True, adaptive_scale=False, init=init, init_zero=init_zero,
                        init_attn=dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2)),
                        act=act)
        self._build_mapping(embedding_type, noise_channels, emb_channels, label_dim, augment_dim, init)
        self._build_encoder(in_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                            encoder_type, resample_filter, init, block_kw)
        self._build_decoder(out_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                            decoder_type, resample_filter, bottleneck_attention, init_zero, block_kw)
        if use_apex_gn:  # raises ImportError, naming Apex, when it is not installed
            for m in self.modules():
                if isinstance(m, GroupNorm):
                    m.use_apex()

    # ----------------------------------------------------------------------------- construction
    def _build_mapping(self, embedding_type: str, noise_channels: int, emb_channels: int,
                       label_dim: int, augment_dim: int, init: dict) -> None:
        if embedding_type == "zero":
            self.register_buffer("zero_emb", torch.zeros(1, emb_channels), persistent=False)
            return
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True)
                          if embedding_type == "positional" else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = (Linear(augment_dim, noise_channels, bias=False, **init)
                            if augment_dim else None)
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

    def _build_encoder(self, in_channels: int, model_channels: int, channel_mult: Sequence[int],
                       num_blocks: int, attn_resolutions: Sequence[int], encoder_type: str,
                       resample_filter: Sequence[int], init: dict, block_kw: dict) -> None:
        self.enc = torch.nn.ModuleDict()
        self._enc_plan: list[tuple[str, str]] = []  # (name, role): the forward reads no names
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = self.img_shape_y >> level
            if level == 0:
                cin, cout = cout, model_channels
                self._add(self.enc, self._enc_plan, f"{res}x{res}_conv", "conv",
                          Conv2d(cin, cout, kernel=3, **init))
            else:
                self._add(self.enc, self._enc_plan, f"{res}x{res}_down", "block",
                          UNetBlock(cout, cout, down=True, **block_kw))
                if encoder_type == "skip":
                    self._add(self.enc, self._enc_plan, f"{res}x{res}_aux_down", "aux_down",
                              Conv2d(caux, caux, kernel=0, down=True, resample_filter=resample_filter))
                    self._add(self.enc, self._enc_plan, f"{res}x{res}_aux_skip", "aux_skip",
                              Conv2d(caux, cout, kernel=1, **init))
                if encoder_type == "residual":
                    self._add(self.enc, self._enc_plan, f"{res}x{res}_aux_residual", "aux_residual",
                              Conv2d(caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                                     fused_resample=True, **init))
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self._add(self.enc, self._enc_plan, f"{res}x{res}_block{idx}", "block",
                          UNetBlock(cin, cout, attention=res in attn_resolutions, **block_kw))
        self._skip_channels = [m.out_channels for name, m in self.enc.items() if "aux" not in name]
        self._enc_out = cout

    def _build_decoder(self, out_channels: int, model_channels: int, channel_mult: Sequence[int],
                       num_blocks: int, attn_resolutions: Sequence[int], decoder_type: str,
                       resample_filter: Sequence[int], bottleneck_attention: bool,
                       init_zero: dict, block_kw: dict) -> None:
        self.dec = torch.nn.ModuleDict()
        self._dec_plan: list[tuple[str, str]] = []
        skips, cout, last = list(self._skip_channels), self._enc_out, len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = self.img_shape_y >> level
            if level == last:
                self._add(self.dec, self._dec_plan, f"{res}x{res}_in0", "block",
                          UNetBlock(cout, cout, attention=bottleneck_attention, **block_kw))
                self._add(self.dec, self._dec_plan, f"{res}x{res}_in1", "block",
                          UNetBlock(cout, cout, **block_kw))
            else:
                self._add(self.dec, self._dec_plan, f"{res}x{res}_up", "up",
                          UNetBlock(cout, cout, up=True, **block_kw))
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self._add(self.dec, self._dec_plan, f"{res}x{res}_block{idx}", "cat_block",
                          UNetBlock(cin, cout, attention=attn, **block_kw))
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self._add(self.dec, self._dec_plan, f"{res}x{res}_aux_up", "aux_up",
                              Conv2d(out_channels, out_channels, kernel=0, up=True,
                                     resample_filter=resample_filter))
                self._add(self.dec, self._dec_plan, f"{res}x{res}_aux_norm", "aux_norm",
                          GroupNorm(cout, eps=1e-6))
                self._add(self.dec, self._dec_plan, f"{res}x{res}_aux_conv", "aux_conv",
                          Conv2d(cout, out_channels, kernel=3, **init_zero))

    @staticmethod
    def _add(modules: torch.nn.ModuleDict, plan: list, name: str, role: str,
             module: torch.nn.Module) -> None:
        modules[name] = module
        plan.append((name, role))

    @property
    def input_multiple(self) -> int:
        """Input heights and widths must be multiples of this (``2**(levels-1)``)."""
        return self._input_shape_mult

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None,
                augment_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Denoiser output ``(B, out_channels, H, W)`` for input ``x`` ``(B, in_channels, H, W)``
        and ``noise_labels`` ``(B,)`` (or ``(1,)`` shared)."""
        if not torch.compiler.is_compiling():
            self._check_inputs(x, noise_labels, class_labels, augment_labels)
        emb = self._embed(x, noise_labels, class_labels, augment_labels)
        # NHWC: oneDNN (CPU) and cuDNN (tensor cores) convolutions and group norm are faster
        x = x.contiguous(memory_format=self.memory_format)
        x, skips = self._encode(x, emb)
        return self._decode(x, emb, skips).contiguous()

    def _embed(self, x: torch.Tensor, noise_labels: torch.Tensor,
               class_labels: Optional[torch.Tensor],
               augment_labels: Optional[torch.Tensor]) -> torch.Tensor:
        if self.embedding_type == "zero":
            return self.zero_emb.repeat(noise_labels.shape[0], 1)
        emb = self.map_noise(noise_labels)
        half = emb.shape[1] // 2
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)  # DDPM++ order: sin before cos
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def _run_block(self, block: torch.nn.Module, x: torch.Tensor, emb: torch.Tensor,
                   threshold: float) -> torch.Tensor:
        if math.isqrt(x.shape[-2] * x.shape[-1]) > threshold and torch.is_grad_enabled():
            return checkpoint(block, x, emb, use_reentrant=False)
        return block(x, emb)

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        aux = x
        for name, role in self._enc_plan:
            block = self.enc[name]
            if role == "aux_down":
                aux = block(aux)
            elif role == "aux_skip":
                x = skips[-1] = x + block(aux)
            elif role == "aux_residual":
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            elif role == "conv":
                x = block(x)
                if self.additive_pos_embed:
                    x = x + self.spatial_emb.to(dtype=x.dtype)
                skips.append(x)
            else:
                x = self._run_block(block, x, emb, self.checkpoint_threshold)
                skips.append(x)
        return x, skips

    def _decode(self, x: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        aux: Optional[torch.Tensor] = None
        tmp = x
        for name, role in self._dec_plan:
            block = self.dec[name]
            if role == "aux_up":
                aux = block(aux)
            elif role == "aux_norm":
                tmp = block(x)
            elif role == "aux_conv":
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            elif role == "cat_block":
                x = torch.cat([x, skips.pop()], dim=1)
                x = self._run_block(block, x, emb, self.checkpoint_threshold)
            elif role == "up":
                x = self._run_block(block, x, emb, self.checkpoint_threshold / 2)
            else:  # the bottleneck blocks are never checkpointed, as in the reference
                x = block(x, emb)
        return aux

    def _check_inputs(self, x: torch.Tensor, noise_labels: torch.Tensor,
                      class_labels: Optional[torch.Tensor],
                      augment_labels: Optional[torch.Tensor]) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a 4D input x, got shape {tuple(x.shape)}")
        for d in x.shape[-2:]:
            pow2 = d > 0 and (d & (d - 1)) == 0
            if not ((pow2 and d < self._input_shape_mult) or d % self._input_shape_mult == 0):
                raise ValueError(f"input size {tuple(x.shape[-2:])} must be multiples of "
                                 f"2**(levels-1) = {self._input_shape_mult}")
        b = x.shape[0]
        if noise_labels.ndim != 1 or noise_labels.shape[0] not in (b, 1):
            raise ValueError(f"expected noise_labels of shape ({b},) or (1,), "
                             f"got {tuple(noise_labels.shape)}")
        if self.label_dim and class_labels is not None and class_labels.shape != (b, self.label_dim):
            raise ValueError(f"expected class_labels of shape ({b}, {self.label_dim}), "
                             f"got {tuple(class_labels.shape)}")
        if (self.augment_dim and augment_labels is not None
                and augment_labels.shape != (b, self.augment_dim)):
            raise ValueError(f"expected augment_labels of shape ({b}, {self.augment_dim}), "
                             f"got {tuple(augment_labels.shape)}")


class SongUNetPosEmbd(SongUNet):
    """``SongUNet`` whose input is concatenated with a global positional grid ``pos_embd``.

    ``in_channels`` counts the grid channels too. ``gridtype``: ``learnable`` (a parameter),
    ``linear`` (x, y in [-1, 1]), ``sinusoidal`` (sin x, sin y, cos x, cos y per frequency band,
    the legacy bands ``2**linspace(0, k, k)`` of trained CorrDiff checkpoints),
    ``sinusoidal_octave`` (bands ``2**arange(k)``) or ``test`` (integer row/column indices);
    see ``resdepth.models.grid``. A patch of the global image selects its part of the grid through
    ``global_index`` ``(P, 2, H_p, W_p)`` (row, column indices; the batch holds ``B`` copies of the
    ``P`` patches, patch-major within each copy) or an ``embedding_selector`` callable.

    Difference from PhysicsNeMo: PhysicsNeMo PR #1000 made the 4-channel sinusoidal grid stack
    its x and y components in the wrong order and PR #1096 put them back (the order trained
    CorrDiff models use). PhysicsNeMo 2.2.2 ships the fixed order; ours is built from the closed
    form in ``resdepth.models.grid`` rather than by copying meshgrid code, and the tests check it
    against that formula and against 2.2.2, and check that the swapped order would be caught.
    The lead-time options belong to ``SongUNetPosLtEmbd``, which resdepth does not provide.
    """

    takes_global_index = True  # the residual wrapper passes patch positions only to this class

    def __init__(self, img_resolution: Union[Sequence[int], int], in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (28,), dropout: float = 0.13,
                 label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard",
                 decoder_type: str = "standard", resample_filter: Sequence[int] = (1, 1),
                 gridtype: Literal["sinusoidal", "sinusoidal_octave", "learnable", "linear",
                                   "test"] = "sinusoidal",
                 N_grid_channels: int = 4, checkpoint_level: int = 0,
                 additive_pos_embed: bool = False, bottleneck_attention: bool = True,
                 use_apex_gn: bool = False, act: str = "silu", profile_mode: bool = False,
                 amp_mode: bool = False, lead_time_mode: bool = False,
                 lead_time_channels: Optional[int] = None, lead_time_steps: int = 9,
                 prob_channels: Sequence[int] = ()):
        if lead_time_mode or lead_time_channels:
            raise NotImplementedError("lead-time embeddings (SongUNetPosLtEmbd) are not supported")
        super().__init__(img_resolution, in_channels, out_channels, label_dim=label_dim,
                         augment_dim=augment_dim, model_channels=model_channels,
                         channel_mult=channel_mult, channel_mult_emb=channel_mult_emb,
                         num_blocks=num_blocks, attn_resolutions=attn_resolutions, dropout=dropout,
                         label_dropout=label_dropout, embedding_type=embedding_type,
                         channel_mult_noise=channel_mult_noise, encoder_type=encoder_type,
                         decoder_type=decoder_type, resample_filter=resample_filter,
                         checkpoint_level=checkpoint_level, additive_pos_embed=additive_pos_embed,
                         bottleneck_attention=bottleneck_attention, use_apex_gn=use_apex_gn,
                         act=act, profile_mode=profile_mode, amp_mode=amp_mode)
        self.gridtype, self.N_grid_channels = gridtype, N_grid_channels
        self.lead_time_mode, self.lt_embd = False, None
        grid = positional_grid(gridtype, N_grid_channels, self.img_shape_y, self.img_shape_x)
        if grid is None or gridtype == "learnable":
            self.pos_embd = torch.nn.Parameter(grid) if grid is not None else None
        else:
            self.register_buffer("pos_embd", grid, persistent=False)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None,
                global_index: Optional[torch.Tensor] = None,
                embedding_selector: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                augment_labels: Optional[torch.Tensor] = None,
                lead_time_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As ``SongUNet.forward``, with the grid (or the patch's part of it) appended to ``x``."""
        if embedding_selector is not None and global_index is not None:
            raise ValueError("pass either embedding_selector or global_index, not both")
        if lead_time_label is not None:
            raise NotImplementedError("lead-time embeddings (SongUNetPosLtEmbd) are not supported")
        if self.pos_embd is not None:
            if embedding_selector is not None:
                grid = embedding_selector(self.pos_embd.to(x.dtype))
            else:
                grid = self.positional_embedding_indexing(x, global_index)
            x = torch.cat((x, grid.to(x.dtype)), dim=1)
        return super().forward(x, noise_labels, class_labels, augment_labels)

    def positional_embedding_indexing(self, x: torch.Tensor,
                                      global_index: Optional[torch.Tensor] = None,
                                      lead_time_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The grid rows/columns named by ``global_index`` ``(P, 2, H_p, W_p)``, repeated for the
        ``B = len(x) // P`` copies: ``(B*P, C_grid, H_p, W_p)``; the whole grid when ``None``."""
        if self.pos_embd is None:
            raise ValueError("positional_embedding_indexing needs N_grid_channels > 0")
        grid = self.pos_embd.to(x.dtype)
        if global_index is None:
            if tuple(x.shape[-2:]) != tuple(grid.shape[-2:]):
                raise ValueError(f"input {tuple(x.shape[-2:])} is not the size of the positional grid "
                                 f"{tuple(grid.shape[-2:])}: a crop or patch needs its global_index")
            return grid[None].expand(x.shape[0], -1, -1, -1)
        p = global_index.shape[0]
        rows, cols = global_index[:, 0].long(), global_index[:, 1].long()  # (P, H_p, W_p)
        patches = grid[:, rows, cols].transpose(0, 1)  # (P, C, H_p, W_p)
        return patches.repeat(x.shape[0] // p, 1, 1, 1)

    def positional_embedding_selector(self, x: torch.Tensor,
                                      embedding_selector: Callable[[torch.Tensor], torch.Tensor],
                                      lead_time_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embedding_selector`` applied to the whole grid ``(C_grid, H, W)``."""
        if self.pos_embd is None:
            raise ValueError("positional_embedding_selector needs N_grid_channels > 0")
        return embedding_selector(self.pos_embd.to(x.dtype))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"invalid {name}: {value!r}; must be one of {list(choices)}")
