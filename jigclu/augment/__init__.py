"""Batched per-patch augmentation, run on tensors on the training device.

JigClu (Chen, Liu, Jia; "Jigsaw Clustering for Unsupervised Visual Representation Learning",
CVPR 2021) augments every patch of every image independently with the MoCo v2 recipe
(Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020), itself the SimCLR
recipe (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020) plus blur: :data:`REFERENCE_RECIPE` (an :class:`AugmentRecipe`, the one place its
values are written).

The reference runs that per patch, per image, in PIL on data-loader processes. Here the whole
batch of patches is augmented at once: parameters are drawn for all patches in one go
(:func:`sample_params`), and each op is a small function of the patches and one parameter
tensor with a row per patch (:func:`adjust_brightness_`, :func:`adjust_hue_`,
:func:`gaussian_blur`, ...). Nothing loops over patches in Python.

Deliberate differences from the torchvision/PIL reference (each documented where it lives):

- Crop sizes and positions are continuous (sub-pixel), not rounded to whole pixels, and each crop
  is resampled straight from its full source image by one bilinear ``grid_sample`` without
  antialiasing (``F.interpolate(antialias=False)`` semantics; PIL's bilinear resize antialiases
  when it shrinks, so the reference's shrunken crops are slightly smoother).
- The colour-jitter sub-ops run in a fixed order (brightness, contrast, saturation, hue);
  torchvision shuffles the order on every call.
- The horizontal flip is folded into the crop's affine transform; that is exact because every
  later op is per-pixel or a mirror-symmetric blur with symmetric (reflect) padding.

Ops whose name ends in ``_`` work in place on the tensor they are given and return it, like
PyTorch's own: on CPU, allocating a fresh multi-megabyte tensor per op (page faults) costs ten
times more than the arithmetic.

The package, by concern: :mod:`~jigclu.augment.recipe` (the distribution, written once),
:mod:`~jigclu.augment.params` (drawing it), :mod:`~jigclu.augment.geometry` (uint8 -> float,
crop + resize + flip), :mod:`~jigclu.augment.color`, :mod:`~jigclu.augment.blur` and
:mod:`~jigclu.augment.patch` (the module and its chunked scheduling).
"""

from jigclu.augment.blur import blur_kernel_size, blur_matrices, gaussian_blur, gaussian_kernels
from jigclu.augment.color import (
    LUMA_WEIGHTS,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue_,
    adjust_saturation_,
    color_jitter_,
    grayscale_,
    hue6_to_rgb_,
    normalize_,
    rgb_to_gray,
    rgb_to_hue6,
)
from jigclu.augment.geometry import crop_grid, resample_patches, to_float_rgb
from jigclu.augment.params import (
    PatchParams,
    identity_params,
    sample_crops,
    sample_params,
)
from jigclu.augment.patch import PatchAugment
from jigclu.augment.recipe import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFERENCE_RECIPE,
    AugmentRecipe,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LUMA_WEIGHTS",
    "REFERENCE_RECIPE",
    "AugmentRecipe",
    "PatchAugment",
    "PatchParams",
    "adjust_brightness_",
    "adjust_contrast_",
    "adjust_hue_",
    "adjust_saturation_",
    "blur_kernel_size",
    "blur_matrices",
    "color_jitter_",
    "crop_grid",
    "gaussian_blur",
    "gaussian_kernels",
    "grayscale_",
    "hue6_to_rgb_",
    "identity_params",
    "normalize_",
    "resample_patches",
    "rgb_to_gray",
    "rgb_to_hue6",
    "sample_crops",
    "sample_params",
    "to_float_rgb",
]
