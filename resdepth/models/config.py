"""Configuration of the U-Net (argument names as in PhysicsNeMo's SongUNet) and the training stage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resdepth.config.core import opt


@dataclass
class ModelConfig:
    stage: Literal["regression", "diffusion"] = opt("regression", "Which net this run trains: the regression mean or the residual diffusion.")
    arch: Literal["SongUNet", "SongUNetPosEmbd"] = opt("SongUNet", "U-Net class of the net this run trains.")
    regression_arch: Literal["SongUNet", "SongUNetPosEmbd"] = opt("SongUNet", "Stage 2: U-Net class expected of the frozen regression net (its other sizes are the ones below).")
    model_channels: int = opt(32, "Base channel count of the U-Net.")
    channel_mult: list[int] = opt([1, 2, 2], "Channel multiplier per resolution level.")
    channel_mult_emb: int = opt(4, "Multiplier of model_channels for the noise embedding width.")
    num_blocks: int = opt(2, "Residual blocks per resolution level.")
    attn_resolutions: list[int] = opt([16], "Levels with self-attention, named by their feature-map height (of the frame padded to 2**(levels-1)); a value matching no level is an error.")
    bottleneck_attention: bool = opt(True, "Self-attention in the first bottleneck block (PhysicsNeMo's default); its cost grows with the square of the bottleneck's pixels.")
    dropout: float = opt(0.0, "Dropout probability inside residual blocks.")
    embedding_type: Literal["positional", "fourier", "zero"] = opt("positional", "Noise-level embedding.")
    encoder_type: Literal["standard", "skip", "residual"] = opt("standard", "Encoder architecture.")
    decoder_type: Literal["standard", "skip"] = opt("standard", "Decoder architecture.")
    resample_filter: list[int] = opt([1, 1], "Resampling filter taps.")
    checkpoint_level: int = opt(0, "Gradient checkpointing: layers at resolution >= img_resolution >> level are checkpointed (0 = off).")
    gridtype: Literal["sinusoidal", "linear", "learnable", "test"] = opt("sinusoidal", "Positional grid of SongUNetPosEmbd.")
    N_grid_channels: int = opt(4, "Channels of the positional grid of SongUNetPosEmbd.")
    hr_mean_conditioning: bool = opt(False, "Residual net also sees the regression mean as a condition channel.")
    use_apex_gn: bool = opt(False, "Training on GPU: group norm + activation in NVIDIA Apex's fused NHWC kernel (needs Apex; weights unchanged).")
    regression_ckpt: str = opt("", "Stage 2: regression run directory, checkpoint directory or exported weights file.")

    def check(self) -> list[tuple[str, str]]:
        """(key, problem) for every value out of range."""
        out = []
        if self.model_channels <= 0:
            out.append(("model_channels", f"must be >= 1, got {self.model_channels}"))
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            out.append(("channel_mult", f"must list one positive multiplier per level, got {self.channel_mult}"))
        if self.num_blocks < 1:
            out.append(("num_blocks", f"must be >= 1, got {self.num_blocks}"))
        if not 0 <= self.dropout < 1:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        return out
