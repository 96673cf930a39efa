import pytest
import torch

from resdepth.diffusion.patching import (GridPatching, patch_condition, patchify, random_patch_index,
                                         take_patches, unpatchify)


@pytest.mark.parametrize("patch_shape,overlap,boundary", [
    ((16, 16), 0, 0), ((16, 20), 4, 2), ((37, 50), 0, 0), ((8, 8), 3, 5), ((40, 64), 0, 0)])
def test_patch_then_fuse_is_identity(patch_shape, overlap, boundary):
    x = torch.randn(2, 3, 37, 50, dtype=torch.float64)
    patching = GridPatching((37, 50), patch_shape, overlap, boundary)
    patches = patching.apply(x)
    assert patches.shape == (2 * patching.num_patches, 3, *patch_shape)
    torch.testing.assert_close(patching.fuse(patches), x, rtol=0, atol=1e-12)
    # the global index points at exactly the pixels each patch holds (reflection included)
    assert torch.equal(take_patches(x, patching.global_index(2)), patches)


def test_patch_count_and_sample_major_layout():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    patches = patchify(x, (4, 4))
    assert patches.shape == (8, 1, 4, 4)
    assert torch.equal(patches[0, 0], x[0, 0, :4, :4])
    assert torch.equal(patches[1, 0], x[0, 0, :4, 4:])
    assert torch.equal(patches[4, 0], x[1, 0, :4, :4])
    # overlap averaging: fusing patches of a constant image stays constant
    ones = torch.ones(1, 1, 10, 10)
    torch.testing.assert_close(unpatchify(patchify(ones, (4, 4), 2), (10, 10), 2), ones)


def test_reflect_padding_too_large_is_refused():
    with pytest.raises(ValueError, match="reflect padding"):
        GridPatching((4, 4), (4, 4), 0, 4)


def test_random_patches_match_their_index():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 12, 9)
    index = random_patch_index(3, (12, 9), (5, 4), patch_num=2, generator=g)
    patches = take_patches(x, index)
    assert patches.shape == (6, 2, 5, 4)
    for k in range(6):
        r, c = index[k, 0, 0, 0].item(), index[k, 1, 0, 0].item()
        assert torch.equal(patches[k], x[k // 2, :, r:r + 5, c:c + 4])


def test_patch_condition_appends_resized_whole_image():
    cond = torch.randn(2, 3, 8, 8)
    patches = patchify(cond, (4, 4))
    out = patch_condition(patches, cond)
    assert out.shape == (8, 6, 4, 4)
    small = torch.nn.functional.avg_pool2d(cond, 2)  # bilinear halving = 2x2 average
    torch.testing.assert_close(out[5, 3:], small[1])
