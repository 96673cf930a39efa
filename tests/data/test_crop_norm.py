"""Loader crops report where they sit in the frame; the E2Depth voxel normalisation is applied."""
import numpy as np
import pytest

from resdepth.data import format as fmt
from resdepth.data.loader import ShardStream, split_urls
from resdepth.data.voxel import apply_voxel_norm


def frames(split) -> dict[str, np.ndarray]:
    out = {}
    for url in split_urls(str(split)):
        for raw in fmt.iter_shard(url):
            d = fmt.decode_sample(raw, None)
            out[d["key"]] = d["events"].astype(np.float32)
    return out


def test_crop_origin_is_the_place_in_the_presented_frame(synth_root):
    """Each crop equals the frame (or the flipped frame, for flipped samples) cut at ``origin``."""
    split = synth_root / "train"
    s = ShardStream(str(split), mode="train", batch_size=6, crop=[9, 11], flip=True, seed=3,
                    index=fmt.read_index(split))
    full = frames(split)
    flips, origins = 0, set()
    for batch in s:
        for key, ev, (y0, x0) in zip(batch["key"], batch["events"].numpy(), batch["origin"].tolist()):
            f = full[key]
            plain = f[:, y0:y0 + 9, x0:x0 + 11]
            flipped = f[..., ::-1][:, y0:y0 + 9, x0:x0 + 11]
            assert np.array_equal(ev, plain) or np.array_equal(ev, flipped), key
            flips += not np.array_equal(ev, plain)
            origins.add((y0, x0))
    assert 0 < flips < len(full) and len(origins) > 10
    b = next(iter(ShardStream(str(synth_root / "val"), mode="eval", batch_size=4)))
    assert b["origin"].tolist() == [[0, 0]] * 4


def test_voxel_norm_nonzero(synth_root):
    split = synth_root / "val"
    full = frames(split)
    b = next(iter(ShardStream(str(split), mode="eval", batch_size=4, voxel_norm="nonzero")))
    for key, ev in zip(b["key"], b["events"].numpy()):
        raw = full[key]
        nz = raw != 0
        assert np.array_equal(ev != 0, nz)  # zeros stay zero
        assert abs(ev[nz].mean()) < 1e-5 and abs(ev[nz].std() - 1) < 1e-4
        assert np.allclose(ev, apply_voxel_norm(raw, "nonzero"))
    plain = next(iter(ShardStream(str(split), mode="eval", batch_size=4)))
    assert np.array_equal(plain["events"].numpy(), np.stack([full[k] for k in plain["key"]]))
    with pytest.raises(ValueError, match="voxel_norm"):
        ShardStream(str(split), mode="eval", batch_size=4, voxel_norm="minmax")
