"""Shards for the tests: synthetic splits written once, and tar shards rewritten sample by sample
(damaged on purpose)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from resdepth.data import format as fmt


def write_synth_splits(root: Path, counts: dict[str, int], seed: int, per_shard: int) -> Path:
    """``root/<split>`` for each split of ``counts``: 16x16 synthetic samples with 3 bins."""
    from resdepth.data.sources import SynthSource
    from resdepth.data.synthetic import SynthParams
    from resdepth.data.writer import write_split

    params = SynthParams(height=16, width=16, bins=3)
    for split, n in counts.items():
        src = SynthSource(split, n, seed=seed, params=params)
        write_split(root / split, src, per_shard=per_shard, params={"command": "synth", **src.describe()})
    return root


def rewrite_shard(src: Path, mutate: Callable[[dict], Optional[dict]], dst: Optional[Path] = None) -> None:
    """Write ``mutate(sample)`` for every raw sample of the tar ``src`` to ``dst`` (default: ``src``
    itself); a sample for which ``mutate`` returns None is left out."""
    import webdataset as wds

    samples = [{k: v for k, v in raw.items() if k != "__url__"} for raw in fmt.iter_shard(str(src))]
    with open(dst or src, "wb") as f:
        w = wds.TarWriter(f, encoder=False)
        for raw in samples:
            raw = mutate(raw)
            if raw is not None:
                w.write(raw)
        w.close()
