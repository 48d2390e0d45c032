"""The module: :class:`PatchAugment`, and the scheduling of its ops over patches and chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import Tensor

from jigclu.augment.blur import blur_kernel_size, gaussian_blur
from jigclu.augment.color import color_jitter_, grayscale_, normalize_
from jigclu.augment.geometry import _as_float_rgb, crop_grid, resample_patches
from jigclu.augment.params import PatchParams, identity_params, sample_params
from jigclu.augment.recipe import REFERENCE_RECIPE, AugmentRecipe

# On CPU the patches go through the pipeline a few images at a time, about this many bytes of
# float32 patches per chunk: small enough that the ~30 elementwise passes hit cache and reuse
# heap memory instead of page-faulting fresh buffers in (measured ~3x faster than one chunk).
_CPU_CHUNK_BYTES = 2 * 1024 * 1024


def _patches_per_image(src: Tensor, num_images: int) -> int:
    """``k`` if every image has exactly ``k >= 1`` patches in ``src``, else 0 (one host sync)."""
    p = src.shape[0]
    if num_images == 0 or p == 0 or p % num_images:
        return 0
    per_image = p // num_images
    counts = torch.bincount(src, minlength=num_images)
    return per_image if bool((counts == per_image).all()) else 0


def _apply_where(x: Tensor, mask: Tensor, op: Callable[..., Tensor], *params: Tensor) -> Tensor:
    """Apply ``op(patches, *params)`` to the patches where ``mask`` is True.

    On CPU only the selected patches are computed (finding them is free there). On accelerators
    every patch is computed, relying on identity parameters where ``mask`` is False, because
    selecting would cost a host sync per op, which is far dearer than the arithmetic saved.
    """
    if x.device.type != "cpu":
        return op(x, *params)
    index = mask.nonzero().squeeze(1)
    if index.numel() == x.shape[0]:
        return op(x, *params)
    if index.numel() > 0:
        # index_select / index_copy_ move whole patches (memcpy per row); x[index] = ... goes
        # through the generic index_put kernel, several times slower on CPU.
        picked = op(x.index_select(0, index), *(q.index_select(0, index) for q in params))
        x.index_copy_(0, index, picked)
    return x


def _chunks(
    src: Tensor, num_images: int, patches_per_chunk: int
) -> Iterator[tuple[Tensor, Tensor | slice, int]]:
    """Split the patches into image-major chunks of about ``patches_per_chunk`` patches.

    Yields ``(ids, images, per_image)``: the chunk's patch indices, the index of its source
    images (``images[i]`` is the source of patches ``ids[i*k : (i+1)*k]``) and ``k``. When every
    image has the same number of patches (the jigsaw case) chunks hold whole images and
    ``images`` is a slice, so no image is copied; otherwise each patch gets its own gathered
    image (``k = 1``), a copy bounded by the chunk size.
    """
    p = src.shape[0]
    per_image = _patches_per_image(src, num_images)
    if per_image:
        order = torch.argsort(src, stable=True)
        step = max(1, patches_per_chunk // per_image)
        for i in range(0, num_images, step):
            j = min(i + step, num_images)
            yield order[i * per_image : j * per_image], slice(i, j), per_image
    else:
        for a in range(0, p, patches_per_chunk):
            ids = torch.arange(a, min(a + patches_per_chunk, p), device=src.device)
            yield ids, src[ids], 1


class PatchAugment(torch.nn.Module):
    """JigClu's per-patch augmentation, batched on the training device.

    Every patch gets its own draw from ``recipe`` (default :data:`REFERENCE_RECIPE`, the MoCo v2
    recipe JigClu uses; Chen, Liu, Jia, CVPR 2021), see :class:`AugmentRecipe`; keyword
    ``overrides`` replace its fields (``PatchAugment(16, gray_p=0.0)``). With ``enabled=False``
    each patch is just its box resized to ``out_size`` and normalised (evaluation, or an ablation
    without augmentation).

    Runs under ``torch.no_grad`` and in float32 whatever the surrounding autocast; all
    randomness comes from the ``generator`` given to :meth:`forward`.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        out_size: int,
        recipe: AugmentRecipe = REFERENCE_RECIPE,
        *,
        enabled: bool = True,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if out_size < 1:
            raise ValueError(f"out_size must be >= 1, got {out_size}")
        self.recipe = recipe.updated("PatchAugment.__init__", overrides)
        self.out_size = int(out_size)
        self.enabled = enabled
        self.kernel_size = blur_kernel_size(self.recipe.blur_sigma[1], self.out_size)
        # Not persistent: constants of the recipe, not state a checkpoint should carry.
        self.register_buffer("mean", torch.tensor(self.recipe.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(self.recipe.std, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, enabled={self.enabled}, {self.recipe.describe()}"

    def sample(self, boxes: Tensor, generator: torch.Generator | None = None) -> PatchParams:
        """Per-patch parameters for ``boxes`` (identity colour, no flip, whole box when disabled)."""
        if not self.enabled:
            return identity_params(boxes)
        return sample_params(boxes, self.recipe, generator=generator)

    def apply_color(self, x: Tensor, params: PatchParams) -> Tensor:
        """Jitter, grayscale and blur ``x`` ``[P, 3, S, S]`` (in [0, 1]) with per-patch ``params``."""
        jitter = (params.brightness, params.contrast, params.saturation, params.hue)
        x = _apply_where(x, params.jittered, color_jitter_, *jitter)
        x = _apply_where(x, params.gray, grayscale_, params.gray)
        blur = partial(gaussian_blur, kernel_size=self.kernel_size)
        return _apply_where(x, params.sigma > 0, blur, params.sigma)

    @torch.no_grad()
    def forward(
        self, images: Tensor, src: Tensor, boxes: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Augment patches cut from ``images``.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1] on the training device (uint8 ``[B, 1|3,
                H, W]`` is accepted too and converted chunk by chunk, see :func:`to_float_rgb`).
            src: long ``[P]``: index into ``images`` of each patch's source image.
            boxes: ``[P, 4]`` (x0, y0, x1, y1) pixel box of each patch in its source image,
                x1/y1 exclusive like PIL's ``crop``.
            generator: source of all randomness (on any device); the global RNG if None.

        Returns:
            float32 ``[P, 3, out_size, out_size]`` normalised patches on ``images.device``.
        """
        gray_uint8 = images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 1
        if images.ndim != 4 or not (images.shape[1] == 3 or gray_uint8):
            raise ValueError(
                f"images must be [B, 3, H, W] (or uint8 [B, 1, H, W]), got {tuple(images.shape)}"
            )
        if src.ndim != 1 or boxes.shape != (src.shape[0], 4):
            raise ValueError(
                f"src must be [P] and boxes [P, 4], got {tuple(src.shape)} and {tuple(boxes.shape)}"
            )
        device = images.device
        num_images, height, width = images.shape[0], images.shape[2], images.shape[3]
        size = self.out_size
        with torch.autocast(device_type=device.type, enabled=False):
            src = src.to(device=device, dtype=torch.long)
            params = self.sample(boxes.to(device=device, dtype=torch.float32), generator)
            mean, std = self.mean.to(device), self.std.to(device)
            out = torch.empty(src.shape[0], 3, size, size, device=device)
            per_chunk = src.shape[0]
            if device.type == "cpu":
                per_chunk = max(1, _CPU_CHUNK_BYTES // (3 * size * size * 4))
            for ids, which, per_image in _chunks(src, num_images, max(1, per_chunk)):
                chunk = params.select(ids)
                grid = crop_grid(chunk.crops, chunk.flip, (height, width), size)
                x = resample_patches(_as_float_rgb(images[which]), grid, per_image)
                if self.enabled:
                    x = self.apply_color(x, chunk)
                out.index_copy_(0, ids, normalize_(x, mean, std))  # not out[ids] =: see _apply_where
            return out
