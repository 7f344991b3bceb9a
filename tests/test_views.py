"""What an image becomes in a streamed batch (bench.data.views): the paper's scale augmentation, RandomResizedCrop and the
test view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2.functional import center_crop, crop, resize

from bench.data.views import Augmentation, View, _resized_crop_box


def _smooth_image(height: int, width: int) -> torch.Tensor:
    """A uint8 [3, H, W] image of slow gradients, where resampling the same region two ways gives close pixels."""
    rows = torch.linspace(0, 1, height)[:, None]
    cols = torch.linspace(0, 1, width)[None, :]
    channels = [rows * 200 + 20, cols * 200 + 20, (rows + cols) * 100 + 20]
    return torch.stack([c.expand(height, width) for c in channels]).round().to(torch.uint8)


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (240, 240), (20, 30)])
def test_scale_box_is_a_size_crop_of_the_image_resized_to_256_480(height, width):
    view = View(224, Augmentation.scale)
    rng = np.random.default_rng(0)
    sides = []
    for _ in range(400):
        top, left, box_height, box_width = view._scale_box(height, width, rng)
        assert box_height == box_width and 0 <= top <= height - box_height and 0 <= left <= width - box_width
        sides.append(box_height)
    # The crop covers 224 / S of the shorter side, S in [256, 480]: to a source pixel of rounding.
    shorter = min(height, width)
    assert min(sides) >= round(224 * shorter / 480) - 1 and max(sides) <= round(224 * shorter / 256) + 1
    if shorter >= 200:  # enough source pixels to see the range used, not only its ends
        assert max(sides) - min(sides) > 0.35 * shorter


def test_scale_view_matches_resizing_the_whole_image_then_cropping():
    """Cropping first and resizing the crop is the paper's resize-then-crop, to a fraction of a pixel."""
    image = _smooth_image(375, 500)
    view = View(224, Augmentation.scale)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        out = view(image, rng)
        rng = np.random.default_rng(seed)  # the same draws again, for the slow way
        top, left, side, _ = view._scale_box(375, 500, rng)
        flipped = rng.random() < 0.5
        factor = 224 / side
        whole = resize(image, [round(375 * factor), round(500 * factor)], antialias=True)
        slow = crop(whole, round(top * factor), round(left * factor), 224, 224)
        slow = slow.flip(-1) if flipped else slow
        assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
        assert (out.float() - slow.float()).abs().mean() < 2.0


def test_resized_crop_box_follows_torchvisions_bounds():
    rng = np.random.default_rng(1)
    for height, width in [(375, 500), (100, 1000), (1000, 100)]:
        for _ in range(200):
            top, left, h, w = _resized_crop_box(height, width, rng)
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
            if (h, w) != (height, width) and h * w < height * width:
                assert 0.08 * height * width * 0.9 <= h * w and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_test_view_is_torchvisions_resize_256_then_centre_224():
    image = _smooth_image(300, 410)
    expected = center_crop(resize(image, [256], antialias=True), [224, 224])
    assert torch.equal(View(224)(image, None), expected)
    small = View(64)(image, None)  # sizes scale with the input size: 256 * 64 / 224 = 73
    assert torch.equal(small, center_crop(resize(image, [73], antialias=True), [64, 64]))


def test_views_flip_about_half_the_time_and_describe_themselves():
    image = _smooth_image(260, 300)
    view = View(32, Augmentation.resized_crop)
    flips = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        box = _resized_crop_box(260, 300, rng)
        flips += rng.random() < 0.5
        assert view(image, np.random.default_rng(seed)).shape == (3, 32, 32)
        assert box[2] > 0
    assert 70 < flips < 130
    assert View(224, Augmentation.scale).describe() == "shorter side 256-480, random 224 crop, flip"
    assert View(224).describe() == "shorter side 256, centre 224 crop"
