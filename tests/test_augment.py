"""Tests for the batched per-patch augmentation (jigclu.augment)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

import jigclu.augment as aug
import jigclu.augment.patch as aug_patch
from jigclu.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchAugment,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue_,
    adjust_saturation_,
    color_jitter_,
    gaussian_blur,
    grayscale_,
    sample_crops,
    sample_params,
    to_float_rgb,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation the module applies last."""
    return x * STD.to(x.device) + MEAN.to(x.device)


def rand_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def rand_patches(p: int = 6, size: int = 12, seed: int = 1) -> torch.Tensor:
    """Random patches with a few special pixels: gray, pure and saturated colours, ties."""
    x = torch.rand(p, 3, size, size, generator=torch.Generator().manual_seed(seed))
    specials = [(0.5, 0.5, 0.5), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    specials += [(1, 1, 0), (0, 1, 1), (1, 0, 1), (0.2, 0.7, 0.7)]
    for i, rgb in enumerate(specials):
        x[i % p, :, 0, i] = torch.tensor(rgb)
    return x


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Geometry without augmentation
# --------------------------------------------------------------------------------------------


def test_identity_box_returns_exact_pixels() -> None:
    """A box of exactly out_size x out_size pixels at integer coordinates is copied verbatim."""
    images = rand_images(2, 20, 24)
    box = torch.tensor([[3, 2, 19, 18]], dtype=torch.float32).repeat(2, 1)
    out = PatchAugment(16, enabled=False)(images, torch.tensor([1, 0]), box)
    assert torch.allclose(unnormalize(out), images[[1, 0], :, 2:18, 3:19], atol=1e-5, rtol=0)

    square = rand_images(3, 16, 16, seed=4)
    whole = torch.tensor([[0, 0, 16, 16]], dtype=torch.long).repeat(3, 1)
    out = PatchAugment(16, enabled=False)(square, torch.arange(3), whole)
    assert torch.allclose(unnormalize(out), square, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("box", "size"),
    [((5, 3, 31, 30), 16), ((4, 6, 13, 17), 16), ((0, 0, 32, 32), 7), ((10, 1, 32, 12), 20)],
    ids=["shrink", "enlarge", "whole-odd", "edge-touching"],
)
def test_subregion_matches_interpolate(box: tuple[int, int, int, int], size: int) -> None:
    images = rand_images(2, 32, 32, seed=2)
    x0, y0, x1, y1 = box
    boxes = torch.tensor([box, box], dtype=torch.float32)
    out = PatchAugment(size, enabled=False)(images, torch.tensor([0, 1]), boxes)
    crop = images[:, :, y0:y1, x0:x1]
    expected = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    assert torch.allclose(unnormalize(out), expected, atol=1e-5, rtol=0)


def test_uneven_patch_counts_use_each_patch_source() -> None:
    """src need not give every image the same number of patches (gather path)."""
    images = rand_images(3, 24, 24, seed=3)
    src = torch.tensor([2, 0, 0, 2, 2])
    boxes = torch.tensor([[0, 0, 12, 12], [4, 4, 20, 20], [8, 0, 24, 16], [2, 3, 10, 11], [0, 0, 24, 24]])
    out = unnormalize(PatchAugment(8, enabled=False)(images, src, boxes))
    for k in range(len(src)):
        x0, y0, x1, y1 = boxes[k].tolist()
        crop = images[src[k] : src[k] + 1, :, y0:y1, x0:x1]
        expected = F.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False)
        assert torch.allclose(out[k : k + 1], expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# The module's contract
# --------------------------------------------------------------------------------------------


def jigsaw_inputs(b: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, position-major src and the four reference quadrant boxes (cross ratio 0.3)."""
    images = rand_images(b, size, size, seed=5)
    c = 0.3 * size
    half = size // 2
    quads = torch.tensor(
        [
            [0, 0, half + c, half + c],
            [0, half - c, half + c, size],
            [half - c, 0, size, half + c],
            [half - c, half - c, size, size],
        ]
    )
    return images, torch.arange(b).repeat(4), quads.repeat_interleave(b, dim=0)


@pytest.mark.parametrize("size", [16, 5, 1])
def test_output_shape_dtype_device(size: int) -> None:
    images, src, boxes = jigsaw_inputs()
    out = PatchAugment(size)(images, src, boxes, gen(0))
    assert out.shape == (16, 3, size, size)
    assert out.dtype == torch.float32
    assert out.device == images.device
    assert torch.isfinite(out).all()
    # values stay inside the normalised [0, 1] range
    assert unnormalize(out).min() >= -1e-5 and unnormalize(out).max() <= 1 + 1e-5


def test_empty_batch() -> None:
    images = rand_images(2, 8, 8)
    out = PatchAugment(4)(images, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert out.shape == (0, 3, 4, 4)


def test_uint8_and_float_inputs_agree() -> None:
    images, src, boxes = jigsaw_inputs()
    as_uint8 = (images * 255).round().to(torch.uint8)
    a = PatchAugment(16)(as_uint8, src, boxes, gen(3))
    b = PatchAugment(16)(to_float_rgb(as_uint8), src, boxes, gen(3))
    assert torch.equal(a, b)


def test_same_seed_same_output_different_seed_different_output() -> None:
    images, src, boxes = jigsaw_inputs()
    augment = PatchAugment(16)
    a = augment(images, src, boxes, gen(7))
    b = augment(images, src, boxes, gen(7))
    c = augment(images, src, boxes, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_global_rng_used_without_generator() -> None:
    images, src, boxes = jigsaw_inputs()
    torch.manual_seed(11)
    a = PatchAugment(16)(images, src, boxes)
    torch.manual_seed(11)
    b = PatchAugment(16)(images, src, boxes)
    assert torch.equal(a, b)


def test_every_patch_gets_its_own_parameters() -> None:
    images = rand_images(1, 32, 32, seed=6)
    boxes = torch.tensor([[4, 4, 28, 28]]).repeat(64, 1)
    out = PatchAugment(16)(images, torch.zeros(64, dtype=torch.long), boxes, gen(1))
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(64, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3


def test_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    images, src, boxes = jigsaw_inputs(b=6)
    whole = PatchAugment(16)(images, src, boxes, gen(2))
    # six patches' worth of bytes: chunks of one image (4 patches) at a time
    monkeypatch.setattr(aug_patch, "_CPU_CHUNK_BYTES", 3 * 16 * 16 * 4 * 6)
    chunked = PatchAugment(16)(images, src, boxes, gen(2))
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=0)


def test_autocast_keeps_float32_and_results() -> None:
    images, src, boxes = jigsaw_inputs()
    plain = PatchAugment(16)(images, src, boxes, gen(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = PatchAugment(16)(images, src, boxes, gen(4))
    assert under.dtype == torch.float32
    assert torch.allclose(plain, under, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator() -> None:
    images, src, boxes = jigsaw_inputs()
    cpu = PatchAugment(16)(images, src, boxes, gen(9))
    cuda = PatchAugment(16).cuda()(images.cuda(), src.cuda(), boxes.cuda(), gen(9))
    assert cuda.device.type == "cuda"
    assert torch.allclose(cpu, cuda.cpu(), atol=1e-4)
    g = torch.Generator(device="cuda").manual_seed(1)
    again = PatchAugment(16).cuda()(images.cuda(), src.cuda(), boxes.cuda(), g)
    assert again.shape == cpu.shape


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="scale"):
        PatchAugment(16, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="gray_p"):
        PatchAugment(16, gray_p=1.5)
    with pytest.raises(ValueError, match="jitter"):
        PatchAugment(16, jitter=(0.4, 0.4, 0.4, 0.7))
    with pytest.raises(ValueError, match="out_size"):
        PatchAugment(0)
    with pytest.raises(ValueError, match="boxes"):
        PatchAugment(4)(rand_images(1, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(3, 4))


def test_to_float_rgb() -> None:
    gray = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = to_float_rgb(gray)
    assert rgb.shape == (2, 3, 5, 5) and rgb.dtype == torch.float32
    assert torch.equal(rgb[:, 0], gray[:, 0].float() / 255) and torch.equal(rgb[:, 0], rgb[:, 2])
    rgb.add_(1.0)  # must own its memory, not alias the expanded channel
    color = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    assert torch.allclose(to_float_rgb(color), color.float() / 255)
    with pytest.raises(TypeError):
        to_float_rgb(color.float())


# --------------------------------------------------------------------------------------------
# Each op against torchvision, with explicit per-patch parameters
# --------------------------------------------------------------------------------------------


def per_patch_reference(x: torch.Tensor, fn, params: torch.Tensor) -> torch.Tensor:
    return torch.stack([fn(x[k], float(params[k])) for k in range(x.shape[0])])


@pytest.mark.parametrize(
    ("ours", "theirs", "factors", "atol"),
    [
        (adjust_brightness_, TF.adjust_brightness, (0.6, 0.9, 1.0, 1.2, 1.4, 1.7), 1e-6),
        (adjust_contrast_, TF.adjust_contrast, (0.6, 0.9, 1.0, 1.2, 1.4, 1.7), 1e-4),
        (adjust_saturation_, TF.adjust_saturation, (0.0, 0.6, 1.0, 1.2, 1.4, 1.7), 1e-4),
        (adjust_hue_, TF.adjust_hue, (-0.5, -0.1, 0.0, 0.03, 0.1, 0.5), 1e-4),
    ],
    ids=["brightness", "contrast", "saturation", "hue"],
)
def test_color_op_matches_torchvision(ours, theirs, factors, atol: float) -> None:
    x = rand_patches(len(factors))
    params = torch.tensor(factors)
    got = ours(x.clone(), params)
    assert torch.allclose(got, per_patch_reference(x, theirs, params), atol=atol, rtol=0)


def test_hue_round_trip_and_range() -> None:
    x = rand_patches(8, 16, seed=3)
    assert torch.allclose(adjust_hue_(x.clone(), torch.zeros(8)), x, atol=1e-6)
    half_turn_twice = adjust_hue_(adjust_hue_(x.clone(), torch.full((8,), 0.5)), torch.full((8,), -0.5))
    assert torch.allclose(half_turn_twice, x, atol=1e-5)
    assert torch.allclose(adjust_hue_(x.clone(), torch.full((8,), 1 / 3)), x[:, [2, 0, 1]], atol=1e-5)


def test_grayscale_matches_torchvision() -> None:
    x = rand_patches(4)
    got = grayscale_(x.clone(), torch.tensor([True, False, True, False]))
    expected = TF.rgb_to_grayscale(x, num_output_channels=3)
    # torchvision's tensor path weighs red 0.2989 where ITU-R 601-2 (and PIL) use 0.299
    assert torch.allclose(got[[0, 2]], expected[[0, 2]], atol=1e-3, rtol=0)
    assert torch.equal(got[[1, 3]], x[[1, 3]])


@pytest.mark.parametrize(("size", "width"), [(16, 16), (9, 9), (12, 17)])
def test_blur_matches_torchvision(size: int, width: int) -> None:
    x = torch.rand(4, 3, size, width, generator=gen(0))
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0])
    k = aug.blur_kernel_size(2.0, min(size, width))
    got = gaussian_blur(x, sigmas, k)
    expected = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(s)] * 2) for i, s in enumerate(sigmas)])
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_identity_parameters_are_no_ops() -> None:
    """Accelerators run every op on every patch, relying on identity parameters."""
    x = rand_patches(5)
    ones, zeros = torch.ones(5), torch.zeros(5)
    assert torch.allclose(color_jitter_(x.clone(), ones, ones, ones, zeros), x, atol=1e-6)
    assert torch.equal(grayscale_(x.clone(), torch.zeros(5, dtype=torch.bool)), x)
    assert torch.equal(gaussian_blur(x, zeros, 13), x)


def test_flip_is_a_mirror_image() -> None:
    images = rand_images(1, 16, 16, seed=8)
    augment = PatchAugment(16, scale=(1, 1), ratio=(1, 1), jitter_p=0, gray_p=0, blur_p=0, flip_p=1.0)
    box = torch.tensor([[0, 0, 16, 16]])
    out = unnormalize(augment(images, torch.zeros(1, dtype=torch.long), box, gen(0)))
    assert torch.allclose(out, images.flip(-1), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Random parameters
# --------------------------------------------------------------------------------------------


def test_crops_follow_random_resized_crop() -> None:
    boxes = torch.tensor([[10.0, 5.0, 60.0, 45.0]]).repeat(4000, 1)  # 50 x 40 box
    crops = sample_crops(boxes, (0.2, 1.0), (3 / 4, 4 / 3), gen(0))
    x0, y0, w, h = crops.unbind(1)
    eps = 1e-4
    assert (x0 >= 10 - eps).all() and (y0 >= 5 - eps).all()
    assert (x0 + w <= 60 + eps).all() and (y0 + h <= 45 + eps).all()
    area = w * h / (50 * 40)
    assert area.min() >= 0.2 - 1e-4 and area.max() <= 1 + 1e-4
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4
    # rejection keeps large crops rarer than small ones, but both occur
    assert 0.25 < area.mean() < 0.65
    assert (area > 0.9).any() and (area < 0.3).any()


def test_crop_fallback_is_central_with_clamped_ratio() -> None:
    # a 100 x 10 strip: no 3/4..4/3 crop of >= 20% of its area fits, so torchvision falls back
    boxes = torch.tensor([[0.0, 0.0, 100.0, 10.0]])
    crops = sample_crops(boxes, (0.5, 1.0), (3 / 4, 4 / 3), gen(0))
    expected = torch.tensor([[(100 - 40 / 3) / 2, 0.0, 40 / 3, 10.0]])
    assert torch.allclose(crops, expected, atol=1e-4)


def test_parameter_frequencies() -> None:
    boxes = torch.tensor([[0, 0, 32, 32]]).repeat(20000, 1)
    params = sample_params(boxes, jitter_p=0.8, gray_p=0.2, blur_p=0.5, flip_p=0.5, generator=gen(0))
    assert abs(params.jittered.float().mean() - 0.8) < 0.02
    assert abs(params.gray.float().mean() - 0.2) < 0.02
    assert abs((params.sigma > 0).float().mean() - 0.5) < 0.02
    assert abs(params.flip.float().mean() - 0.5) < 0.02
    jit = params.jittered
    assert params.brightness[jit].min() >= 0.6 and params.brightness[jit].max() <= 1.4
    assert params.hue[jit].abs().max() <= 0.1
    assert (params.brightness[~jit] == 1).all() and (params.hue[~jit] == 0).all()
    blurred = params.sigma[params.sigma > 0]
    assert blurred.min() >= 0.1 and blurred.max() <= 2.0


def test_flip_and_grayscale_rates_end_to_end() -> None:
    """Observed in the output: mirrored patches ~ flip_p, single-channel patches ~ gray_p."""
    n = 400
    images = rand_images(n, 8, 8, seed=9)
    augment = PatchAugment(8, scale=(1, 1), ratio=(1, 1), jitter_p=0, gray_p=0.3, blur_p=0, flip_p=0.5)
    out = unnormalize(augment(images, torch.arange(n), torch.tensor([[0, 0, 8, 8]]).repeat(n, 1), gen(1)))
    gray = (out - out.mean(dim=1, keepdim=True)).abs().amax(dim=(1, 2, 3)) < 1e-5
    as_gray = TF.rgb_to_grayscale(images, num_output_channels=3)
    source = torch.where(gray.view(-1, 1, 1, 1), as_gray, images)
    flipped = (out - source.flip(-1)).abs().amax(dim=(1, 2, 3)) < 2e-3
    unflipped = (out - source).abs().amax(dim=(1, 2, 3)) < 2e-3
    assert (flipped ^ unflipped).all()  # every patch is exactly one of the two
    assert 0.42 < flipped.float().mean() < 0.58
    assert 0.22 < gray.float().mean() < 0.38
