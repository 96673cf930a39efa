"""The samples of an existing split directory as a packing source (for resharding)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from resdepth.data import format as fmt
from resdepth.data.sources.base import Record


@dataclass
class TarSource:
    """The samples of an existing split directory, in index order (for resharding)."""
    split_dir: str
    index: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = fmt.read_index(self.split_dir)

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        offset = 0
        for s in self.index["shards"]:
            n = int(s["nsamples"])
            if offset + n > start and offset < stop:
                url = str(Path(self.split_dir) / s["name"])
                for j, raw in enumerate(fmt.iter_shard(url)):
                    if start <= offset + j < stop:
                        d = fmt.decode_sample(raw)
                        yield d["key"], d["events"], d["depth"], d["mask"], d["meta"]
            offset += n

    def describe(self) -> dict[str, Any]:
        return {"source": "shards", "src": str(self.split_dir),
                "parent_params": self.index.get("params", {})}
