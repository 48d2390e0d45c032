"""Decoding a stream's images in the training worker, batched, on its device (``data.decode=device``).

With ``data.decode=device`` the Ray Data tasks only read each row's encoded bytes
(:class:`~jigclu.data.decode.DecodeUnits` with ``raw=True``) and each worker's
:class:`~jigclu.data.stream_loader.StreamLoader` hands every chunk of bytes to a
:class:`DeviceDecoder`:

* JPEGs are decoded together by ``torchvision.io.decode_jpeg(list, device=...)``: nvJPEG on a GPU
  (the way DALI serves solo-learn), libjpeg on a CPU; other formats one at a time by
  ``decode_image`` on the CPU, then moved to the device.
* Each image is converted to the plan's channels and resized to its size on the device (bilinear,
  antialiased, like the PIL shrink of the CPU tasks): close to, not bit-equal with, what the tasks
  decode (``tests/test_device_decode.py`` bounds the difference).
* A corrupt or null image is marked (``ok`` false, ``error`` naming its row) as the tasks mark it, so
  ``data.on_corrupt`` applies the same way.

The same code runs on a CPU-only worker (``device`` = cpu): that is what the CPU suite tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

JPEG_MAGIC = b"\xff\xd8\xff"


class DeviceDecoder:
    """A chunk of raw rows (``data``: encoded bytes, ``where``: each row's name) -> the same rows with
    ``image`` uint8 ``[n, C, H, W]`` on ``device`` and ``ok`` / ``error`` updated."""

    def __init__(self, channels: int, size: tuple[int, int], device: torch.device | str = "cpu") -> None:
        self.channels, self.size, self.device = channels, (int(size[0]), int(size[1])), torch.device(device)
        self.mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB

    def __call__(self, chunk: dict[str, Any]) -> dict[str, Any]:
        blobs, where = chunk["data"], chunk["where"]
        ok = np.array(chunk["ok"], dtype=bool)
        errors = np.array(chunk["error"], dtype=object)
        images = torch.zeros((len(blobs), self.channels, *self.size), dtype=torch.uint8, device=self.device)
        jpegs = [i for i in range(len(blobs)) if ok[i] and bytes(blobs[i][:3]) == JPEG_MAGIC]
        decoded: dict[int, torch.Tensor | Exception] = dict(zip(jpegs, self._jpegs([blobs[i] for i in jpegs])))
        for i in sorted(set(np.flatnonzero(ok).tolist()) - set(jpegs)):
            decoded[i] = self._other(blobs[i])
        for i, image in decoded.items():
            if isinstance(image, Exception):
                ok[i], errors[i] = False, f"{where[i]}: {type(image).__name__}: {image}"
            else:
                images[i] = self._fit(image)
        rest = {k: v for k, v in chunk.items() if k not in ("data", "where")}
        return {**rest, "image": images, "ok": ok, "error": errors}

    def _jpegs(self, blobs: list[bytes]) -> list[torch.Tensor | Exception]:
        """One batched decode; when it fails (a corrupt image fails the batch), one at a time to find it."""
        if not blobs:
            return []
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            return list(decode_jpeg(tensors, mode=self.mode, device=self.device))
        except Exception:  # noqa: BLE001 - torchvision raises RuntimeError or ValueError for bad data
            out: list[torch.Tensor | Exception] = []
            for tensor in tensors:
                try:
                    out.append(decode_jpeg(tensor, mode=self.mode, device=self.device))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    def _other(self, blob: bytes) -> torch.Tensor | Exception:
        try:
            return decode_image(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=self.mode).to(self.device)
        except Exception as exc:  # noqa: BLE001
            return exc

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ([C, H, W] uint8) at the plan's size."""
        if tuple(image.shape[-2:]) == self.size:
            return image
        out = F.interpolate(image[None].float(), size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return out[0].round_().clamp_(0, 255).to(torch.uint8)


__all__ = ["DeviceDecoder", "JPEG_MAGIC"]
