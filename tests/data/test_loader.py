"""ShardStream: coverage over ranks and workers, equal epoch lengths, exact resume, bad data."""
import os
import socket
from collections import Counter

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as tmp_mp

from resdepth.data import format as fmt
from resdepth.data.loader import ShardStream, split_urls
from resdepth.data.norm import DepthNorm


def keys_of(stream):
    return [k for b in stream for k in b["key"]]


def test_split_urls(synth_root):
    urls = split_urls(str(synth_root), "train")
    assert len(urls) == 7 and urls[0].endswith("shard-000000.tar")
    pattern = str(synth_root / "train" / "shard-{000000..000006}.tar")
    assert split_urls(pattern, None) == urls
    assert split_urls("pipe:cat a.tar", None) == ["pipe:cat a.tar"]


def test_eval_every_sample_once_2_ranks_2_workers(synth_root):
    index = fmt.read_index(synth_root / "train")
    urls = split_urls(str(synth_root / "train"))
    seen = []
    for rank in range(2):
        s = ShardStream(urls, mode="eval", batch_size=4, num_workers=2, rank=rank, world_size=2,
                        index=index)
        got = keys_of(s)
        assert len(got) == sum(len(b["key"]) for b in s)
        assert len(list(iter(s))) == len(s)
        seen += got
    assert len(seen) == 60 and Counter(seen).most_common(1)[0][1] == 1


def test_batch_contract(synth_root):
    norm = DepthNorm("log")
    s = ShardStream(str(synth_root / "val"), mode="eval", batch_size=5, norm=norm,
                    index=fmt.read_index(synth_root / "val"))
    b = next(iter(s))
    assert b["events"].shape == (5, 3, 16, 16) and b["events"].dtype == torch.float32
    for k in ("depth", "depth_m", "mask"):
        assert b[k].shape == (5, 1, 16, 16) and b[k].dtype == torch.float32
    assert ((b["depth_m"] > 0) == (b["mask"] > 0)).all()
    torch.testing.assert_close(b["depth"], norm.normalize(b["depth_m"]))
    assert [len(x["key"]) for x in s] == [5, 5, 2]


def test_train_ranks_equal_length_and_crop_flip(synth_root):
    index = fmt.read_index(synth_root / "train")
    urls = split_urls(str(synth_root / "train"))
    lens = []
    for rank in range(2):
        s = ShardStream(urls, mode="train", batch_size=4, num_workers=2, rank=rank, world_size=2,
                        index=index, crop=[8, 12], flip=True, seed=1)
        batches = list(s)
        assert len(batches) == len(s) == 60 // 8
        assert batches[0]["events"].shape == (4, 3, 8, 12) and batches[0]["mask"].shape == (4, 1, 8, 12)
        lens.append(len(batches))
        assert s.state_dict() == {"epoch": 1, "seed": 1, "position": 0}
    assert lens[0] == lens[1]


def test_epochs_differ_and_are_reproducible(synth_root):
    urls = split_urls(str(synth_root / "train"))
    a = ShardStream(urls, batch_size=4, seed=0, rank=0, world_size=1)
    e0, e1 = keys_of(a), keys_of(a)
    assert e0 != e1 and len(e0) == 60 // 4 * 4
    b = ShardStream(urls, batch_size=4, seed=0, rank=0, world_size=1)
    assert keys_of(b) == e0


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_matches_uninterrupted(synth_root, workers):
    urls = split_urls(str(synth_root / "train"))
    kw = dict(batch_size=3, num_workers=workers, seed=7, rank=0, world_size=1, crop=[8, 8], flip=True)
    full = ShardStream(urls, **kw)
    want = [(b["key"], b["events"]) for _ in range(2) for b in full]  # two epochs
    part = ShardStream(urls, **kw)
    part.load_state_dict({"epoch": 0, "seed": 7, "position": 0})
    got = []
    for b in part:
        got.append((b["key"], b["events"]))
        if len(got) == 13:
            break
    state = part.state_dict()
    assert state == {"epoch": 0, "seed": 7, "position": 13}
    resumed = ShardStream(urls, **kw)
    resumed.load_state_dict(state)
    got += [(b["key"], b["events"]) for b in resumed]
    got += [(b["key"], b["events"]) for b in resumed]
    assert [k for k, _ in got] == [k for k, _ in want]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))


def _rewrite(src_tar, dst_tar, mutate):
    import webdataset as wds

    with open(dst_tar, "wb") as f:
        w = wds.TarWriter(f, encoder=False)
        for raw in fmt.iter_shard(str(src_tar)):
            raw = mutate({k: v for k, v in raw.items() if k != "__url__"})
            if raw is not None:
                w.write(raw)
        w.close()


def test_bad_sample_raise_and_skip(synth_root, tmp_path):
    src = synth_root / "val" / "shard-000001.tar"
    bad = tmp_path / "shard-000003.tar"

    def drop_depth(raw):
        if raw["__key__"] == "val_0000010":
            del raw["depth.npy"]
        return raw

    _rewrite(src, bad, drop_depth)
    with pytest.raises(fmt.DataError, match=r"shard-000003.tar: sample 'val_0000010': depth.npy missing"):
        list(ShardStream([str(bad)], mode="eval", batch_size=2))
    s = ShardStream([str(bad)], mode="eval", batch_size=2, on_error="skip")
    assert len(keys_of(s)) == 2 and s.skipped == 1
    s2 = ShardStream([str(bad), str(src)], mode="eval", batch_size=2, on_error="skip", num_workers=2,
                     world_size=1, rank=0)
    assert len(keys_of(s2)) == 5 and s2.skipped == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        idx = fmt.read_index(os.path.join(root, "train"))
        urls = split_urls(root, "train")
        ev = ShardStream(urls, mode="eval", batch_size=4, num_workers=2, index=idx)
        keys = keys_of(ev)
        tr = ShardStream(urls, mode="train", batch_size=4, num_workers=2, index=idx)
        n_train = sum(1 for _ in tr)
        gathered = [None] * world
        torch_dist.all_gather_object(gathered, (keys, n_train, len(tr)))
        if rank == 0:
            torch.save(gathered, out)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.dist
def test_two_real_gloo_ranks(synth_root, tmp_path):
    out = tmp_path / "gathered.pt"
    # fork: the children share the imported torch (a spawn re-imports it, seconds per process)
    tmp_mp.start_processes(_dist_worker, args=(2, _free_port(), str(synth_root), str(out)),
                           nprocs=2, start_method="fork")
    gathered = torch.load(out, weights_only=False)
    keys = [k for ks, _, _ in gathered for k in ks]
    assert len(keys) == 60 and len(set(keys)) == 60
    assert gathered[0][1] == gathered[1][1] == gathered[0][2] == 60 // 8
