"""A run's input streams come from the data section of the config."""
from __future__ import annotations

from resdepth.config import load_config
from resdepth.data.loader import ShardStream, split_urls
from resdepth.train.config import Config


def test_stream_from_config_takes_the_data_section(tiny_shards):
    cfg = load_config(Config, ["experiment=baseline_regression", f"data.root={tiny_shards}",
                               "data.crop=[16,24]", "data.num_workers=2", "data.on_error=skip",
                               "data.voxel_norm=nonzero", "data.depth_norm=inverse",
                               "data.max_consecutive_skips=7"])
    urls = split_urls(str(tiny_shards / "train"))
    train = ShardStream.from_config(cfg.data, "train", urls=urls, batch_size=4, seed=5)
    assert (train.num_workers, train.crop, train.flip, train.seed) == (2, (16, 24), cfg.data.flip, 5)
    assert (train.on_error, train.voxel_norm, train.max_consecutive_skips) == ("skip", "nonzero", 7)
    assert train.norm.to_dict()["kind"] == "inverse"
    batch = next(iter(train))
    assert list(batch["events"].shape) == [4, 3, 16, 24]
    # Evaluation streams read whole frames in order, in this process.
    val = ShardStream.from_config(cfg.data, "eval", urls=split_urls(str(tiny_shards / "val")),
                                  batch_size=4, seed=5)
    assert (val.num_workers, val.crop, val.flip) == (0, None, False)
    assert list(next(iter(val))["events"].shape) == [4, 3, 32, 32]
