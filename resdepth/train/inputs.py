"""A run's input: the train and val splits as streams, their index and the voxel grid's shape."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from resdepth import dist
from resdepth.data.format import context_of, read_index
from resdepth.data.loader import ShardStream, peek_context, peek_shape, split_urls
from resdepth.data.netinput import context_mismatch, input_spec
from resdepth.data.norm import DepthNorm
from resdepth.train.config import Config
from resdepth.utils.errors import UserError


def micro_batch_size(cfg: Config) -> int:
    """Images per rank per micro-batch; refuses a batch size that does not split evenly."""
    tc, world = cfg.trainer, dist.world_size()
    per_rank, rem = divmod(tc.batch_size, world * tc.grad_accum)
    if rem or per_rank < 1:
        raise UserError(f"trainer.batch_size={tc.batch_size} must be a multiple of world size "
                         f"({world}) x trainer.grad_accum ({tc.grad_accum})")
    return per_rank


def read_index_or_none(root: str, split: str) -> Optional[dict]:
    """``root/split/index.json``, or None when there is none (bare URLs)."""
    if not root or not (Path(root) / split / "index.json").exists():
        return None
    return read_index(Path(root) / split)


def shape_from(index: Optional[dict], urls: list[str]) -> tuple[int, int, int]:
    """(bins, H, W) from ``index.json``, or from the first sample when streaming bare URLs."""
    if index is not None:
        b, h, w = index["shapes"]["events.npy"]
        return int(b), int(h), int(w)
    return peek_shape(urls)


@dataclass
class TrainInputs:
    """The streams of a run (per rank) and what a net of the run takes."""
    norm: DepthNorm
    micro_batch: int
    train_urls: list[str]
    index: Optional[dict]
    bins: int
    height: int
    width: int
    train: ShardStream
    val: Optional[ShardStream]
    context: Optional[dict] = None  # {"ms", "bins"} of the temporal context, None without

    @property
    def cond_channels(self) -> int:
        """A net's condition channels: the window's bins, then the context's."""
        return self.bins + (self.context["bins"] if self.context else 0)

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> "TrainInputs":
        """Check ``data.root`` (or the URLs) and open the train stream and, when validation is on
        and a val split exists, the val stream."""
        data, seed = cfg.data, cfg.run.seed
        micro = micro_batch_size(cfg)
        if not data.root and not data.train_urls:
            raise UserError("data.root is empty: point it at a directory holding train/ and val/ "
                             "(make one with `resdepth-shards synth --out DIR`)")
        train_src = data.train_urls or str(Path(data.root) / "train")
        if not data.train_urls and not (Path(train_src) / "index.json").is_file():
            raise FileNotFoundError(f"data.root={data.root}: no {train_src}/index.json; data.root "
                                    "must hold train/ and val/ split directories written by "
                                    "resdepth-shards (synth, pack or reshard)")
        urls = split_urls(train_src, None)
        index = read_index_or_none(data.root, "train")
        train = ShardStream.from_config(data, "train", urls=urls, batch_size=micro, seed=seed,
                                        index=index, raw=True, pin_memory=device.type == "cuda")
        val, val_index = None, None
        val_src = data.val_urls or (str(Path(data.root) / "val") if data.root else None)
        if cfg.run.val_every > 0 and val_src and (data.val_urls or Path(val_src).is_dir()):
            val_index = read_index_or_none(data.root, "val")
            val = ShardStream.from_config(data, "eval", urls=split_urls(val_src, None),
                                          batch_size=micro, seed=seed, raw=True, index=val_index)
        context = context_of(index) if index is not None else peek_context(urls)
        why = None if val_index is None else context_mismatch(
            context, context_of(val_index), "the train split", "the val split",
            fix="pack both splits with the same --context-ms/--context-bins", made="packed")
        if why:
            raise UserError(why)
        return cls(DepthNorm.from_config(data), micro, urls, index, *shape_from(index, urls),
                   train, val, context)

    def train_in_order(self, cfg: Config) -> ShardStream:
        """The train split read once in order (to measure stage 2's residual std)."""
        return ShardStream.from_config(cfg.data, "eval", urls=self.train_urls,
                                       batch_size=self.micro_batch, seed=cfg.run.seed,
                                       index=self.index)

    def meta(self, cfg: Config) -> dict[str, Any]:
        """The input a net of this run expects: voxel grid shape, how the grid was made from
        events (the training split's ``index.json`` params) and event normalisation."""
        spec = {"bins": self.bins, "height": self.height, "width": self.width,
                **input_spec(self.index, cfg.data.voxel_norm)}
        if self.context:  # from index.json, or from the first sample when streaming bare URLs
            spec["context"] = self.context
        return spec
