"""On CUDA, DDP's gradient buckets take the strides of the channels-last weights the engine makes,
so a training step copies no gradient ("Grad strides do not match bucket view strides")."""
import os
import warnings

import pytest
import torch

from resdepth.models import SongUNet
from resdepth.train.config import TrainerConfig
from resdepth.train.engine import DDPEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_ddp_step_on_cuda_copies_no_gradient(tmp_path):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        net = SongUNet(img_resolution=32, in_channels=3, out_channels=1, model_channels=16,
                       channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16])
        module = DDPEngine(net, TrainerConfig(), torch.device("cuda")).module
        conv = [p for p in module.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = torch.nn.parallel.DistributedDataParallel(module, gradient_as_bucket_view=True)
            x = torch.randn(2, 3, 32, 32, device="cuda")
            ddp(x, torch.ones(2, device="cuda")).square().mean().backward()
        assert not [w for w in caught if "Grad strides" in str(w.message)]
    finally:
        torch.distributed.destroy_process_group()
