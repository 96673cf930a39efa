"""U-Nets of the regression and residual-diffusion nets (PhysicsNeMo-compatible weights)."""
from resdepth.models.physicsnemo_io import CheckpointMismatch, load_physicsnemo
from resdepth.models.song_unet import SongUNet, SongUNetPosEmbd

__all__ = ["SongUNet", "SongUNetPosEmbd", "load_physicsnemo", "CheckpointMismatch"]
