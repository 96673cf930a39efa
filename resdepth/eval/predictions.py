"""``predictions/pred-<unit>.tar``: what evaluation predicted for each sample, when asked."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import webdataset as wds

from resdepth.utils.atomic import tmp_name


def pred_path(out: Path, unit_name: str) -> Path:
    """Where the predictions of unit ``unit_name`` go."""
    return Path(out) / "predictions" / f"pred-{unit_name}.tar"


class PredictionShard:
    """``pred-<unit>.tar`` written under a temporary name and renamed when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_name(self.path)
        self.stream = open(self.tmp, "wb")
        self.writer = wds.TarWriter(self.stream)

    def write(self, key: str, arrays: dict) -> None:
        """One sample: ``<name>.npy`` float32 ``[1, H, W]`` (members ``[M, 1, H, W]``) in metres."""
        sample = {"__key__": key}
        for name, a in arrays.items():
            sample[f"{name}.npy"] = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
        self.writer.write(sample)

    def commit(self) -> None:
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
            self.stream.close()
        finally:
            self.tmp.unlink(missing_ok=True)
