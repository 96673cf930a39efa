"""ShardStream: coverage over ranks and workers, equal epoch lengths, exact resume, bad data."""
import os
import re
import socket
from collections import Counter

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as tmp_mp

from resdepth.data import format as fmt
from resdepth.data.loader import ShardStream, split_urls
from resdepth.data.norm import DepthNorm
from tests.shards import rewrite_shard


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


def test_bad_sample_raise_and_skip(synth_root, tmp_path):
    src = synth_root / "val" / "shard-000001.tar"
    bad = tmp_path / "shard-000003.tar"

    def drop_depth(raw):
        if raw["__key__"] == "val_0000010":
            del raw["depth.npy"]
        return raw

    rewrite_shard(src, drop_depth, bad)
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


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 4), (1, 2, 4), (2, 2, 5), (2, 3, 3), (2, 2, 4)])
def test_train_epoch_is_one_pass(synth_root, world, workers, batch):
    """Every sample of the split once per epoch over all ranks; the remainder (fewer than
    world * batch samples) waits for another epoch; the next epoch is again one pass."""
    index = fmt.read_index(synth_root / "train")
    urls = split_urls(str(synth_root / "train"))
    streams = [ShardStream(urls, mode="train", batch_size=batch, num_workers=workers, rank=r,
                           world_size=world, index=index, seed=5) for r in range(world)]
    for epoch in range(2):
        seen = [keys_of(s) for s in streams]
        flat = [k for ks in seen for k in ks]
        assert [len(ks) for ks in seen] == [len(streams[0]) * batch] * world
        assert len(flat) == 60 // (world * batch) * world * batch
        assert len(set(flat)) == len(flat), Counter(flat).most_common(3)
        if 60 % (world * batch) == 0:
            assert len(set(flat)) == 60


def _all_bad(src, dst):
    def drop_depth(raw):
        del raw["depth.npy"]
        return raw

    rewrite_shard(src, drop_depth, dst)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_stops_after_consecutive_bad_samples(synth_root, tmp_path, workers, caplog):
    bad = [tmp_path / f"shard-00000{i}.tar" for i in range(2)]
    for i, b in enumerate(bad):
        _all_bad(synth_root / "train" / f"shard-00000{i}.tar", b)
    s = ShardStream([str(b) for b in bad], batch_size=2, num_workers=workers, on_error="skip",
                    max_consecutive_skips=25, rank=0, world_size=1)
    with pytest.raises(fmt.DataError) as e:
        keys_of(s)
    msg = str(e.value)
    assert "25 bad samples in a row (data.max_consecutive_skips=25)" in msg
    assert "depth.npy missing" in msg and "Traceback" not in msg and "\n" not in msg
    if workers:
        assert msg.startswith("loader worker ")
    else:  # the log shows the first skips, then counts without flooding
        assert sum("skipped bad data" in r.message for r in caplog.records) == 10


def test_worker_error_is_one_line(synth_root, tmp_path):
    bad = tmp_path / "shard-000000.tar"
    _all_bad(synth_root / "train" / "shard-000000.tar", bad)
    s = ShardStream([str(bad), str(synth_root / "train" / "shard-000001.tar")], batch_size=2,
                    num_workers=2, rank=0, world_size=1)
    with pytest.raises(fmt.DataError) as e:
        keys_of(s)
    assert str(e.value).startswith("loader worker ") and "\n" not in str(e.value)
    assert re.fullmatch(r"loader worker \d: shard-000000.tar: sample 'train_\d+': depth.npy missing",
                        str(e.value))


def test_train_refuses_a_stale_count(synth_root, tmp_path):
    index = fmt.read_index(synth_root / "train")
    index["shards"][3]["nsamples"] -= 2
    urls = split_urls(str(synth_root / "train"))
    with pytest.raises(fmt.DataError, match=r"shard-000003.tar: holds more samples than the 7 "
                                            r"index.json counts"):
        for _ in range(3):  # the shard is read to its end in one of the first epochs
            keys_of(ShardStream(urls, batch_size=2, index=index, rank=0, world_size=1))


def test_pipe_brace_pattern_is_expanded(synth_root):
    index = fmt.read_index(synth_root / "train")
    pattern = "pipe:cat " + str(synth_root / "train" / "shard-{000000..000006}.tar")
    urls = split_urls(pattern, None)
    assert len(urls) == 7 and urls[1] == "pipe:cat " + str(synth_root / "train" / "shard-000001.tar")
    s = ShardStream(urls, batch_size=4, index=index, rank=0, world_size=1, num_workers=2)
    keys = keys_of(s)
    assert len(keys) == len(set(keys)) == 60
