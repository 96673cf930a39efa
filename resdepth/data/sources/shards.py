"""The samples of an existing split directory as a packing source (for resharding)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from resdepth.data import format as fmt
from resdepth.data.sources.base import Record


@dataclass
class TarSource:
    """The samples of an existing split directory, in index order (for resharding), with their
    temporal context unless ``drop_context`` (the same windows without it, e.g. to compare a net
    trained with context against one trained without on the same events)."""
    split_dir: str
    index: dict = field(default_factory=dict)
    drop_context: bool = False

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
                        d = fmt.decode_sample(raw, self.index.get("shapes"))
                        record = (d["key"], d["events"], d["depth"], d["mask"], d["meta"])
                        keep = "context" in d and not self.drop_context
                        yield (*record, d["context"]) if keep else record
            offset += n

    def describe(self) -> dict[str, Any]:
        context = fmt.context_of(self.index)
        kept = {"context_ms": context["ms"], "context_bins": context["bins"]} if context else {}
        return {"source": "shards", "src": str(self.split_dir),
                "parent_params": self.index.get("params", {}),
                **({"dropped_context": True} if context and self.drop_context else kept)}
