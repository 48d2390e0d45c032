"""The batched per-patch augmentation (jigclu.augment) against the reference implementation's
per-image PIL pipeline (benchmarks/speed/reference_pipeline.py): its four patches, its quadrant
boxes, and output statistics that agree within sampling noise."""

from __future__ import annotations

import math

import torch
from PIL import Image

from jigclu.augment import PatchAugment
from tests.test_augment import gen, rand_images

# --------------------------------------------------------------------------------------------
# Reference pipeline (benchmarks/speed/reference_pipeline.py)
# --------------------------------------------------------------------------------------------


def load_reference_module():
    from benchmarks.speed import reference_pipeline

    return reference_pipeline


def test_reference_transform_returns_four_patches() -> None:
    ref = load_reference_module()
    img = Image.fromarray((rand_images(1, 40, 48)[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    patches = ref.reference_transform(16)(img)
    assert len(patches) == 4
    for p in patches:
        assert p.shape == (3, 16, 16) and p.dtype == torch.float32


def test_reference_boxes_match_the_reference_formula() -> None:
    ref = load_reference_module()
    w, h, c = 48, 40, 0.3
    boxes = ref.quadrant_boxes(w, h, c)
    assert boxes[0] == (0, 0, w // 2 + c * w, h // 2 + c * h)
    assert boxes[3] == (w // 2 - c * w, h // 2 - c * h, w, h)
    assert all(math.isclose(b[2] - b[0], (0.5 + c) * w) for b in boxes)


def test_statistics_agree_with_the_reference_pipeline() -> None:
    """Same images through both pipelines: output statistics agree within sampling noise.

    Guards the recipe as a whole (strengths, probabilities, normalisation), which the per-op
    tests cannot: e.g. a doubled brightness range or a grayscale probability of 1 fail here.
    """
    ref = load_reference_module()
    n, size, patch = 300, 64, 32
    images = ref._synthetic_images(n, size)
    torch.manual_seed(0)  # torchvision's transforms draw from the global RNG
    transform = ref.reference_transform(patch)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    theirs = torch.stack([p for img in pil for p in transform(img)])
    boxes = torch.tensor(ref.quadrant_boxes(size, size, 0.3)).repeat_interleave(n, dim=0)
    ours = PatchAugment(patch)(images, torch.arange(n).repeat(4), boxes, gen(0))

    def stats(x: torch.Tensor) -> torch.Tensor:
        chroma = (x.amax(dim=1) - x.amin(dim=1)).mean()
        texture = (x[..., 1:] - x[..., :-1]).abs().mean()
        return torch.cat([x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)), chroma.view(1), texture.view(1)])

    assert torch.allclose(stats(ours), stats(theirs), atol=0.08, rtol=0)
