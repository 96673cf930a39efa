"""What the fast GPU paths rely on, checked on the CPU: contiguous q/k/v for the fused attention
kernels, bf16 maths under autocast, Apex group norm named when it is missing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resdepth.models import SongUNet
from resdepth.models import layers


def tiny_unet(**kw) -> SongUNet:
    torch.manual_seed(0)
    return SongUNet(img_resolution=[8, 12], in_channels=3, out_channels=1, model_channels=16,
                    channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0, **kw)


def test_attention_passes_contiguous_qkv(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(all(t.is_contiguous() for t in (q, k, v)))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    net = tiny_unet()
    net(torch.randn(2, 3, 8, 12), torch.randn(2))
    assert seen and all(seen), seen


def test_autocast_runs_the_net_in_bf16():
    net = tiny_unet()
    x, sigma = torch.randn(2, 3, 8, 12), torch.randn(2)
    conv_out = []
    hook = net.enc["8x8_conv"].register_forward_hook(lambda m, i, o: conv_out.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, sigma)
    hook.remove()
    assert conv_out == [torch.bfloat16] and y.dtype == torch.bfloat16
    ref = net(x, sigma)  # fp32 outside autocast, and close to the bf16 result
    assert ref.dtype == torch.float32
    assert torch.allclose(y.float(), ref, atol=0.05 * ref.abs().max().item())


def test_apex_group_norm_is_named_when_missing():
    try:
        import apex.contrib.group_norm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="Apex"):
            tiny_unet(use_apex_gn=True)
    else:  # Apex present: the option is accepted and the state dict keeps its names
        assert tiny_unet(use_apex_gn=True).state_dict().keys() == tiny_unet().state_dict().keys()
