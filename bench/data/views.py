"""What an image becomes in a streamed batch (bench.data.streaming): uint8 [3, size, size], by one of three views.

- training, `Augmentation.scale`: section 3.4 of the paper: the shorter side resized to a random length in
  [256, 480], a random 224 crop, a horizontal flip;
- training, `Augmentation.resized_crop`: torchvision's RandomResizedCrop, and the flip;
- test (`augmentation` None): the shorter side resized to 256, the centre 224, as torchvision's reference.

Sizes are the paper's at 224 and scale with the input size. Every draw comes from the numpy generator handed
in, never a global one. The per-pixel mean is subtracted later, on the device (bench.data.loader.normalize).
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum

import numpy as np
from torch import Tensor

PAPER_SIZE = 224  # section 3.4's crop; the sizes below are the paper's at 224, scaled with the input size
_SCALE_RANGE = (256, 480)  # the shorter side's random length
_TEST_RESIZE = 256  # torchvision's reference: resize the shorter side to 256, then the centre 224
_RESIZED_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
_RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


class Augmentation(str, Enum):
    """How a training image is cropped (both flip it horizontally with probability 1/2). The paper's colour
    augmentation (AlexNet's PCA lighting) is left out, as torchvision's reference leaves it out."""

    scale = "scale"  # section 3.4: shorter side resized to a random length in [256, 480], a random 224 crop
    resized_crop = "resized-crop"  # torchvision's RandomResizedCrop: 8-100% of the area, aspect 3/4 to 4/3


def _scaled(length: int, size: int) -> int:
    return round(length * size / PAPER_SIZE)


@dataclasses.dataclass(frozen=True)
class View:
    """What an image becomes: uint8 [3, size, size]. `augmentation` None is the test view: the shorter side
    resized to 256, the centre 224 (sizes scaled by size/224)."""

    size: int = PAPER_SIZE
    augmentation: Augmentation | None = None

    def describe(self) -> str:
        if self.augmentation is Augmentation.scale:
            low, high = (_scaled(n, self.size) for n in _SCALE_RANGE)
            return f"shorter side {low}-{high}, random {self.size} crop, flip"
        if self.augmentation is Augmentation.resized_crop:
            return f"RandomResizedCrop {self.size}, flip"
        return f"shorter side {_scaled(_TEST_RESIZE, self.size)}, centre {self.size} crop"

    def __call__(self, image: Tensor, rng: np.random.Generator | None) -> Tensor:
        from torchvision.transforms.v2.functional import center_crop, resize, resized_crop

        if self.augmentation is None:
            return center_crop(resize(image, [_scaled(_TEST_RESIZE, self.size)], antialias=True), [self.size] * 2)
        height, width = image.shape[-2:]
        if self.augmentation is Augmentation.scale:
            box = self._scale_box(height, width, rng)
        else:
            box = _resized_crop_box(height, width, rng)
        out = resized_crop(image, *box, [self.size, self.size], antialias=True)
        return out.flip(-1) if rng.random() < 0.5 else out

    def _scale_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The source pixels of a random size x size crop of the image resized to a random shorter side S.
        Cropping first and resizing the crop alone gives the same view (to a fraction of a pixel, the box's
        rounding) at a fraction of the cost: S x 4S/3 pixels resized per image become size x size."""
        low, high = (_scaled(n, self.size) for n in _SCALE_RANGE)
        factor = int(rng.integers(low, high + 1)) / min(height, width)
        top = int(rng.integers(0, round(height * factor) - self.size + 1)) / factor
        left = int(rng.integers(0, round(width * factor) - self.size + 1)) / factor
        side = max(1, min(round(self.size / factor), height, width))
        return min(round(top), height - side), min(round(left), width - side), side, side


def _resized_crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `rng` instead of torch's global generator."""
    area = height * width
    log_ratio = np.log(_RESIZED_CROP_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*_RESIZED_CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # ten misses: the centre crop of the closest aspect ratio
    if ratio < min(_RESIZED_CROP_RATIO):
        w, h = width, round(width / min(_RESIZED_CROP_RATIO))
    elif ratio > max(_RESIZED_CROP_RATIO):
        w, h = round(height * max(_RESIZED_CROP_RATIO)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
