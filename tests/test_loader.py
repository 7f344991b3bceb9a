"""bench.data.loader: the paper's augmentation on the device, the per-pixel mean subtraction, the epoch's batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.data.loader import augment, epoch_batches, normalize, resize


def _random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_augment_is_a_padded_crop_or_its_mirror():
    images = _random_images(40)
    out = augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(1)))
    padded = F.pad(images, (4, 4, 4, 4))

    def crop(i: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
        window = padded[i, :, dy:dy + 32, dx:dx + 32]
        return window.flip(-1) if flip else window

    seen = set()
    for i in range(len(images)):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[i], crop(i, dy, dx, flip))]
        assert len(matches) == 1, f"sample {i} is not exactly one crop of the padded input"
        seen.add(matches[0])
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20 and {flip for *_, flip in seen} == {False, True}


def test_augment_flips_about_half():
    ramp = torch.arange(1, 33, dtype=torch.uint8).expand(2000, 3, 32, 32).contiguous()  # brighter to the right
    out = augment(ramp, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 16, 10] > out[:, 0, 16, 20]).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_normalize_subtracts_the_per_pixel_mean():
    images = _random_images(64)
    mean = images.float().mean(0) / 255
    x = normalize(images, mean)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert torch.allclose(x, images.float() / 255 - mean)
    assert x.mean(0).abs().max() < 1e-5


def test_epoch_batches_cover_every_index_once():
    batches = epoch_batches(103, 10, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(103))
    again = epoch_batches(103, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    dropped = epoch_batches(103, 10, torch.Generator().manual_seed(0), drop_last=True)
    assert len(dropped) == 10 and torch.equal(torch.cat(dropped), torch.cat(batches)[:100])



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_and_batches_on_the_gpu():
    images = _random_images(64).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    state = generator.get_state()
    out = augment(images, generator)
    generator.set_state(state)
    assert out.is_cuda and torch.equal(out, augment(images, generator))
    batches = epoch_batches(64, 16, generator)
    assert batches[0].is_cuda and torch.equal(torch.cat(batches).sort().values.cpu(), torch.arange(64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_from_the_cpu_generator_on_the_gpu_gives_the_cpu_numbers_without_a_host_sync():
    # bench.run.train draws from a CPU generator (checkpoints resume on any device); its
    # offsets and flips reach the GPU through pinned memory, not a copy that waits for the GPU's queue.
    images = _random_images(64)
    expected = augment(images, torch.Generator().manual_seed(0))
    on_gpu = images.cuda()
    generator = torch.Generator().manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment(on_gpu, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.is_cuda and torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("size", [16, 32, 64, 224])
def test_resize_is_torchvisions_resize_bilinear_antialiased(size):
    from torchvision.transforms.v2 import functional as TF

    images = _random_images(4).float().div(255)
    expected = TF.resize(images, [size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    out = resize(images, size)
    assert out.shape == (4, 3, size, size)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    if size == 32:
        assert out is images  # nothing to do at the stored size


def test_the_mean_subtracted_before_the_resize_is_the_resized_mean():
    images, mean = _random_images(3), torch.rand(3, 32, 32)
    torch.testing.assert_close(resize(normalize(images, mean), 64),
                               resize(images.float().div(255), 64) - resize(mean[None], 64), atol=1e-6, rtol=0)
