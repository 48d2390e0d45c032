"""The augmentation recipe: every distribution parameter of :class:`~jigclu.augment.PatchAugment`.

:data:`REFERENCE_RECIPE` is the MoCo v2 recipe (Chen et al., "Improved Baselines with Momentum
Contrastive Learning", 2020) that JigClu (Chen, Liu, Jia, CVPR 2021) applies to every patch,
itself SimCLR's (Chen et al., ICML 2020) plus blur::

    RandomResizedCrop(scale=(0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8
    -> RandomGrayscale p=0.2 -> GaussianBlur(sigma in [0.1, 2]) p=0.5 -> HorizontalFlip -> Normalize

It is written here once; the module and :func:`~jigclu.augment.sample_params` take a recipe
(this one by default) and accept any of its fields as keyword overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentRecipe:
    """The per-patch augmentation distribution (validated on construction).

    Random resized crop inside the patch's box (``scale`` of the box area, aspect ratio in
    ``ratio``), colour jitter ``jitter`` = (brightness, contrast, saturation, hue) with probability
    ``jitter_p``, grayscale with ``gray_p``, Gaussian blur with sigma in ``blur_sigma`` (pixels of
    the output patch, as the reference blurs after its resized crop) with ``blur_p``, horizontal
    flip with ``flip_p``, then normalisation by ``mean``/``std``.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    flip_p: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        _check_pair("scale", self.scale, high=1.0)
        _check_pair("ratio", self.ratio)
        _check_pair("blur_sigma", self.blur_sigma)
        jitter = self.jitter
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 values >= 0 with hue <= 0.5, got {tuple(jitter)}")
        for name in ("jitter_p", "gray_p", "blur_p", "flip_p"):
            _check_prob(name, getattr(self, name))
        mean, std = self.mean, self.std
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each and std > 0, got {tuple(mean)}, {tuple(std)}")
        for name in ("scale", "ratio", "jitter", "blur_sigma", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def updated(self, caller: str, overrides: dict[str, Any]) -> AugmentRecipe:
        """This recipe with ``overrides`` (field name -> value); unknown names are a TypeError."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        for name in overrides:
            if name not in known:
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
        return replace(self, **overrides)

    def describe(self) -> str:
        """``name=value, ...`` of the random ops' parameters (normalisation left out), for reprs."""
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name not in ("mean", "std"))


def _check_pair(name: str, pair: tuple[float, ...], high: float | None = None) -> None:
    """Raise ValueError unless ``0 < pair[0] <= pair[1] (<= high)``."""
    lo, hi = pair
    if not (0 < lo <= hi and (high is None or hi <= high)):
        bound = f" <= {high}" if high is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {tuple(pair)}")


def _check_prob(name: str, p: float) -> None:
    """Raise ValueError unless ``p`` is a probability."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


REFERENCE_RECIPE = AugmentRecipe()
"""MoCo v2's per-patch recipe, as the JigClu reference implementation uses it."""
