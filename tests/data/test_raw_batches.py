"""Batches shipped as stored (fp16 events, uint8 mask) and finished on the device equal the float
batches, with crop and flip, through persistent workers."""
import torch

from resdepth.data.loader import ShardStream, finish_batch, split_urls
from resdepth.data.norm import DepthNorm


def test_raw_batches_finish_to_the_float_batches(synth_root):
    urls = split_urls(str(synth_root / "train"))
    norm = DepthNorm(kind="log", max_depth=80.0)
    kw = dict(batch_size=4, num_workers=2, seed=3, rank=0, world_size=1, crop=[8, 12], flip=True,
              norm=norm)
    ref, raw = ShardStream(urls, **kw), ShardStream(urls, raw=True, **kw)
    for _ in range(2):  # two epochs: the raw stream's workers persist in between
        for a, b in zip(ref, raw, strict=True):
            assert b["events"].dtype == torch.float16 and b["mask"].dtype == torch.uint8
            assert "depth_m" not in b and b["depth_raw"].dtype == torch.float32
            b = finish_batch(b, torch.device("cpu"), norm)
            assert a["key"] == b["key"]
            for k in ("events", "depth", "depth_m", "mask"):
                assert b[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k
    assert raw._loader is not None and raw.state_dict()["epoch"] == 2
