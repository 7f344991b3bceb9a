"""An offline image-classification set that the project draws itself, so `bench run` works with no download.

Ten classes of shapes (disk, ring, square, triangle, plus, flower, ellipse, bars, crescent, frame), each
drawn with random proportions (ring and frame thickness, arm width, ...), position, scale, rotation and a
squeeze of up to 30% along one axis; random colours (the class never depends on colour), a striped texture
on the shape, a background gradient, thin line clutter under and over the shape, and Gaussian pixel noise.
Only the outline tells the class, so a network has to learn shape.

Version 2 draws the shape lighter than its background in every channel (version 1 drew each channel
0.3-0.7 away, mod 1, so an outline was a rising edge in one channel and a falling one in the next).
One polarity is what lets a network start on the shapes at once (measured in docs/benchmarks.md).

Everything is drawn in torch, vectorised over images, from a seeded CPU `torch.Generator`: the same
(n, seed, image_size) gives the same tensors (bit-identical on a given machine and torch version).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

VERSION = 2  # bump when the drawing changes, so cached copies of the set are drawn again
CLASSES = ("disk", "ring", "square", "triangle", "plus", "flower", "ellipse", "bars", "crescent", "frame")

_SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down, so their edges are anti-aliased like a photo's
_LINES = 3  # clutter segments per image (each drawn with probability 1/2)
_CHUNK = 1024  # images drawn at once: bounds memory at about 100 MB whatever n is


def _mask(cls: int, u: Tensor, v: Tensor, d: Tensor) -> Tensor:
    """Which points (u, v) of the shape's own frame (unit scale, upright) belong to shape `cls`.

    d in [0,1) ([n,1,1]) varies each shape's proportions (ring and frame thickness, arm width, petal depth,
    crescent bite...), so a class is a family of outlines, some of them close to another class's.
    """
    r = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    if cls == 0:  # disk
        return r <= 1.0
    if cls == 1:  # ring
        return (r <= 1.0) & (r >= 0.4 + 0.35 * d)
    if cls == 2:  # square
        return box <= 0.8
    if cls == 3:  # equilateral triangle: inside three half-planes whose normals are 120 degrees apart
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return inside
    if cls == 4:  # plus
        arm = 0.2 + 0.15 * d
        return ((u.abs() <= arm) & (v.abs() <= 1.0)) | ((v.abs() <= arm) & (u.abs() <= 1.0))
    if cls == 5:  # five-petal flower
        depth = 0.25 + 0.2 * d
        return r <= 1 - depth + depth * torch.cos(5 * torch.atan2(v, u))
    if cls == 6:  # ellipse
        return (u * u + (v / (0.35 + 0.2 * d)) ** 2) <= 1.0
    if cls == 7:  # two parallel bars
        return (v.abs() >= 0.15 + 0.15 * d) & (v.abs() <= 0.65) & (u.abs() <= 0.9)
    if cls == 8:  # crescent: a disk with an offset disk cut out
        return (r <= 1.0) & ((u - 0.3 - 0.3 * d) ** 2 + v * v > 0.64)
    if cls == 9:  # square frame
        return (box <= 0.85) & (box >= 0.4 + 0.3 * d)
    raise ValueError(f"no shape for class {cls}")


def _segment_distance(x: Tensor, y: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """Distance from grid points (x, y) to the segments p->q ([n,K,2] each), as [n,K,H,W]."""
    px, py = p[..., 0, None, None], p[..., 1, None, None]
    dx, dy = (q - p)[..., 0, None, None], (q - p)[..., 1, None, None]
    t = (((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp(0, 1)
    return torch.sqrt((x - px - t * dx) ** 2 + (y - py - t * dy) ** 2)


def _grid(size: int, supersample: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates, in pixels of the final image, as broadcastable y [S,1] and x [1,S]."""
    coords = (torch.arange(size * supersample, dtype=torch.float32) + 0.5) / supersample
    return coords.view(-1, 1), coords.view(1, -1)


def _draw(labels: Tensor, params: dict[str, Tensor], noise: Tensor, size: int) -> Tensor:
    """Render one chunk of images from their drawn parameters; float [n,3,size,size] in [0,1]."""
    n = len(labels)
    y, x = _grid(size, 1)

    # Background: a linear gradient between two colours along a random direction.
    gx, gy = params["grad_dir"][:, 0, None, None], params["grad_dir"][:, 1, None, None]
    ramp = (((x - size / 2) * gx + (y - size / 2) * gy) / size + 0.5).clamp(0, 1)[:, None]
    img = params["bg"][..., None, None] * (1 - ramp) + params["bg2"][..., None, None] * ramp

    # Clutter: thin segments with analytically anti-aliased edges (coverage ramps over one pixel).
    dist = _segment_distance(x, y, params["line_p"], params["line_q"])
    lines = (params["line_w"][..., None, None] + 0.5 - dist).clamp(0, 1) * params["line_on"][..., None, None]

    def paint(img: Tensor, coverage: Tensor, colour: Tensor) -> Tensor:  # coverage [n,H,W], colour [n,3|1,..]
        return torch.lerp(img, colour, coverage[:, None])

    top = params["line_top"]
    for k in range(_LINES):  # lines under the shape
        img = paint(img, lines[:, k] * ~top[:, k, None, None], params["line_col"][:, k, :, None, None])

    # The shape's coverage, drawn at 2x and averaged down: translate, rotate, scale into its own frame.
    sy, sx = _grid(size, _SUPERSAMPLE)
    cos, sin = torch.cos(params["angle"])[:, None, None], torch.sin(params["angle"])[:, None, None]
    scale = params["scale"][:, None, None]
    dx, dy = sx - params["center"][:, 0, None, None], sy - params["center"][:, 1, None, None]
    u, v = (dx * cos + dy * sin) / scale, (-dx * sin + dy * cos) / (scale * params["squash"][:, None, None])
    shape = torch.zeros(n, size * _SUPERSAMPLE, size * _SUPERSAMPLE)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        shape[idx] = _mask(c, u[idx], v[idx], params["detail"][idx, None, None]).float()
    shape = F.avg_pool2d(shape, _SUPERSAMPLE)
    # Stripes across the shape, in its own frame, so its fill is a texture, not a flat colour.
    u, v = F.avg_pool2d(u, _SUPERSAMPLE), F.avg_pool2d(v, _SUPERSAMPLE)
    a = params["stripe_angle"][:, None, None]
    wave = torch.sin(params["stripe_freq"][:, None, None] * (u * torch.cos(a) + v * torch.sin(a)))
    stripes = 1 - params["stripe_amp"][:, None, None] * (0.5 + 0.5 * wave)
    img = paint(img, shape, params["fg"][..., None, None] * stripes[:, None])

    for k in range(_LINES):  # lines over the shape: partial occlusion
        img = paint(img, lines[:, k] * top[:, k, None, None], params["line_col"][:, k, :, None, None])

    return (img + noise * params["noise"][:, None, None, None]).clamp(0, 1)


def _params(n: int, size: int, g: torch.Generator) -> dict[str, Tensor]:
    """Every random choice for n images but the pixel noise, as tensors with a leading image dimension."""

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    # The shape is 0.35-0.55 lighter than the background in every channel: always visible, never a colour
    # the class could be read from, and its outline always the same way up (see the module's docstring).
    bg = uniform(n, 3, low=0.0, high=0.45)
    fg = bg + uniform(n, 3, low=0.35, high=0.55)
    grad_angle = uniform(n, low=0, high=2 * math.pi)
    return {
        "bg": bg,
        "bg2": (bg + uniform(n, 3, low=-0.25, high=0.25)).clamp(0, 1),
        "grad_dir": torch.stack([torch.cos(grad_angle), torch.sin(grad_angle)], 1),
        "fg": fg,
        "center": uniform(n, 2, low=0.3 * size, high=0.7 * size),
        "scale": uniform(n, low=0.15 * size, high=0.42 * size),
        "squash": uniform(n, low=0.7, high=1.0),  # shapes are also squeezed along one axis, up to 30%
        "detail": uniform(n),
        "angle": uniform(n, low=0, high=2 * math.pi),
        "stripe_amp": uniform(n, low=0.0, high=0.5),
        "stripe_freq": uniform(n, low=3.0, high=9.0),
        "stripe_angle": uniform(n, low=0, high=math.pi),
        "line_p": uniform(n, _LINES, 2, low=0, high=size),
        "line_q": uniform(n, _LINES, 2, low=0, high=size),
        "line_w": uniform(n, _LINES, low=0.25, high=0.6) * size / 32,
        "line_col": uniform(n, _LINES, 3),
        "line_on": (uniform(n, _LINES) < 0.5).float(),
        "line_top": uniform(n, _LINES) < 0.25,
        "noise": uniform(n, low=0.02, high=0.08),
    }


def generate(n: int, *, seed: int, image_size: int = 32) -> tuple[Tensor, Tensor]:
    """Draw n images with balanced labels; returns (uint8 [n,3,S,S], int64 [n]), identical for the same seed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]
    params = _params(n, image_size, g)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        end = min(start + _CHUNK, n)
        noise = torch.randn(end - start, 3, image_size, image_size, generator=g)
        chunk = {k: p[start:end] for k, p in params.items()}
        images[start:end] = (_draw(labels[start:end], chunk, noise, image_size) * 255).round().to(torch.uint8)
    return images, labels
