"""Evaluation never gives a silent wrong result: stale counts, duplicate keys, another baseline
split or noise device, and malformed files are errors that name the file (and sample)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from resdepth.data import format as fmt
from resdepth.eval import main, merge, parse_args
from tests.eval.runner import BINS, H, W, eval_args, metrics, run_eval, write_split
from tests.shards import rewrite_shard


@pytest.fixture
def small(tmp_path):
    """``train/`` (one shard of 4) and ``test/`` (shards of 3 and 2 samples)."""
    write_split(tmp_path / "data" / "train", [4], seed=5)
    write_split(tmp_path / "data" / "test", [3, 2], seed=6)
    return tmp_path / "data"


def reg_only(exports, data, out, *extra):
    return parse_args(eval_args(exports, data, out, "--baseline", "none", *extra, diffusion=False))


def _edit_index(split, edit):
    index = json.loads((split / "index.json").read_text())
    index = edit(index)
    (split / "index.json").write_text(json.dumps(index))


def test_stale_index_count_fails(small, exports, tmp_path):
    def stale(index):
        index["shards"][0]["nsamples"], index["num_samples"] = 2, 4
        return index

    _edit_index(small / "test", stale)
    with pytest.raises(fmt.DataError, match=r"shard-000000.tar: holds more samples than the 2 "
                                            r"index.json counts"):
        main(reg_only(exports, small / "test", tmp_path / "ev"))


def test_duplicate_keys_are_not_counted_twice(small, exports, tmp_path):
    split = small / "test"
    shutil.copy(split / "shard-000000.tar", split / "shard-000002.tar")

    def add(index):
        index["shards"].append(dict(index["shards"][0], name="shard-000002.tar"))
        index["num_samples"] += 3
        return index

    _edit_index(split, add)
    with pytest.raises(ValueError, match=r"sample key 'test_0000000' is in units "
                                         r"shard-000000@0000000-0000003 and shard-000002@"):
        main(reg_only(exports, split, tmp_path / "ev"))


def test_baseline_split_is_part_of_the_settings(small, exports, tmp_path):
    other = tmp_path / "other_train"
    write_split(other, [4], seed=9)
    out = tmp_path / "ev"
    args = eval_args(exports, small / "test", out, diffusion=False)
    assert main(parse_args(args + ["--baseline", str(small / "train")])) == 0
    with pytest.raises(ValueError, match="holds parts of another evaluation.*baseline split"):
        main(parse_args(args + ["--baseline", str(other)]))
    # a baseline.npy left from the other split is recomputed, not reused
    shutil.rmtree(out / "parts")
    (out / "plan.json").unlink()
    assert main(parse_args(args + ["--baseline", str(other)])) == 0
    fresh = tmp_path / "fresh"
    assert main(parse_args(eval_args(exports, small / "test", fresh, "--baseline", str(other),
                                     diffusion=False))) == 0
    assert metrics(out)["baseline"] == metrics(fresh)["baseline"]
    assert np.array_equal(np.load(out / "baseline.npy"), np.load(fresh / "baseline.npy"))


def test_noise_device_is_part_of_the_settings(small, exports):
    from resdepth.infer.nets import load_nets
    from resdepth.eval.run import make_plan
    from resdepth.infer.work import make_units, split_shards

    shards, index = split_shards(str(small / "test"))
    units = make_units(shards, 3)
    hashes = {}
    for diffusion in (True, False):
        cfg = parse_args(eval_args(exports, small / "test", small / "ev", diffusion=diffusion))
        nets = load_nets(cfg, torch.device("cpu"))
        for dev in ("cpu", "cuda"):
            hashes[diffusion, dev] = make_plan(cfg, nets, units, index, None,
                                               torch.device(dev))["hash"]
    assert hashes[True, "cpu"] != hashes[True, "cuda"]
    assert hashes[False, "cpu"] == hashes[False, "cuda"]  # no noise drawn


@pytest.mark.parametrize("edit,message", [
    (lambda i: None, "holds a JSON NoneType, not an object"),
    (lambda i: dict(i, version="1"), "version is '1', not a non-negative integer"),
    (lambda i: dict(i, shapes={"depth.npy": [1, H, W]}), "shapes['events.npy'] is None"),
    (lambda i: dict(i, shards=[{"name": "shard-000000.tar"}]), "shards[0] lacks nsamples"),
])
def test_malformed_index_names_the_file(small, exports, tmp_path, edit, message):
    _edit_index(small / "test", edit)
    with pytest.raises(fmt.DataError) as e:
        main(reg_only(exports, small / "test", tmp_path / "ev"))
    assert str(e.value).startswith(str(small / "test" / "index.json") + ": ") and message in str(e.value)


def test_truncated_shard_is_a_clear_error(small, exports, tmp_path):
    p = small / "test" / "shard-000001.tar"
    p.write_bytes(p.read_bytes()[:9000])
    proc = run_eval(eval_args(exports, small / "test", tmp_path / "ev", "--baseline", "none",
                              diffusion=False), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("resdepth-eval: error: ") and f"{p}: unreadable tar" in last


def _damage_sample(path, key, mutate):
    def f(raw):
        if raw["__key__"] == key:
            mutate(raw)
        return raw

    rewrite_shard(path, f)


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.update({"events.npy": fmt.npy_bytes(np.zeros((BINS, H, W - 1), np.float16))}),
     f"events.npy has shape [{BINS}, {H}, {W - 1}], expected [{BINS}, {H}, {W}]"),
    (lambda r: r.update({"meta.json": b"{not json"}), "meta.json does not parse"),
])
def test_bad_sample_names_shard_and_key(small, exports, tmp_path, mutate, message):
    shard = small / "test" / "shard-000001.tar"
    _damage_sample(shard, "test_0000004", mutate)
    with pytest.raises(fmt.DataError) as e:
        main(reg_only(exports, small / "test", tmp_path / "ev"))
    assert str(e.value).startswith(f"{shard}: sample test_0000004: ") and message in str(e.value)


@pytest.mark.parametrize("text,message", [("{", "not valid JSON"), ("[]", "holds a JSON list"),
                                          ('{"hash": "x"}', "lacks num_samples")])
def test_malformed_part_names_the_file(small, exports, tmp_path, text, message):
    out = tmp_path / "ev"
    assert main(reg_only(exports, small / "test", out)) == 0
    part = sorted((out / "parts").glob("*.json"))[0]
    part.write_text(text)
    with pytest.raises(ValueError) as e:
        merge(out)
    assert str(e.value).startswith(f"{part}: {message}")


def _strict(text: str):
    """Parse as a strict parser (JavaScript's JSON.parse) does: NaN and Infinity are errors."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_of_a_split_without_valid_pixel_are_strict_json(exports, tmp_path):
    """No valid depth pixel: every ratio metric is undefined and written as null (strict JSON),
    in metrics.json, the parts, and training's stats.jsonl (a step without a gradient norm)."""
    from resdepth.train.monitor import StatsWriter

    split = tmp_path / "data" / "test"
    write_split(split, [3], seed=6)

    def no_depth(raw):
        d = fmt.npy_load(raw["depth.npy"])
        raw["depth.npy"] = fmt.npy_bytes(np.zeros_like(d))
        raw["mask.npy"] = fmt.npy_bytes(np.zeros_like(fmt.npy_load(raw["mask.npy"])))
        return raw

    rewrite_shard(split / "shard-000000.tar", no_depth)
    out = tmp_path / "ev"
    assert main(reg_only(exports, split, out)) == 0
    m = _strict((out / "metrics.json").read_text())
    assert m["num_valid_pixels"] == 0 and m["regression"]["abs_rel"] is None
    parts = sorted((out / "parts").glob("*.json"))
    assert parts
    for part in parts:
        _strict(part.read_text())
    (tmp_path / "run").mkdir()
    StatsWriter(tmp_path / "run", 0).scalars(1, {"train/loss": 0.5, "train/grad_norm": float("nan")})
    line = _strict((tmp_path / "run" / "stats.jsonl").read_text().splitlines()[0])
    assert line["grad_norm"] is None and line["loss"] == 0.5


def test_idle_workers_are_named_in_one_line(small, exports, tmp_path):
    """5 samples in units of 3 make 2 units; 3 array tasks leave one without work: the log says
    so, with the unit size that would give every task a unit (units of 2: 3 units)."""
    proc = run_eval(eval_args(exports, small / "test", tmp_path / "ev", "--baseline", "none",
                              "--num-tasks", "3", "--task-id", "0", diffusion=False))
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if "no work" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].endswith("the work list has 2 units for 3 workers (3 array tasks x 1 processes): "
                             "1 will have no work; --unit-size 2 gives every worker a unit")
