"""Inference machinery shared by evaluation (``resdepth.eval``) and prediction (``resdepth.predict``).

One module per idea, each called with plain calls by both commands:

* ``config``: the settings they share (nets, sampler, work split) and the result hash;
* ``nets``: the exported nets, their input (data shape, voxel normalisation, frame sizes they
  take), patching and the device; ``sampler``: the sampler call, predictions in metres;
* ``work``: the fixed work list of units; ``parts``: per-unit part files and ``plan.json``;
* ``frame``: the process around a work list and this worker's share; ``progress``: the bar;
* ``batching``: batches and read-ahead; ``cli``: command-line flags from a config dataclass.
"""
