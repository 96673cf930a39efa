"""Procedural samples (``resdepth.data.synthetic``) as a packing source."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from resdepth.data.sources.base import Record
from resdepth.data.synthetic import SynthParams, synth_sample


@dataclass
class SynthSource:
    """``n`` procedural samples of one split."""
    split: str
    n: int
    seed: int = 0
    params: SynthParams = field(default_factory=SynthParams)

    def __len__(self) -> int:
        return self.n

    def samples(self, start: int, stop: int) -> Iterator[Record]:
        for i in range(start, stop):
            s = synth_sample(self.seed, self.split, i, self.params)
            record = (f"{self.split}_{i:07d}", s["events"], s["depth"], s["mask"], s["meta"])
            yield (*record, s["context"]) if "context" in s else record

    def describe(self) -> dict[str, Any]:
        return {"source": "synthetic", "split": self.split, "seed": self.seed,
                "split_stream": [self.seed, self.split], **self.params.to_dict()}
