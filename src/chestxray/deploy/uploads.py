"""Uploaded images for the web app: checked by content (not by name), limited in size and pixels, decoded in memory.

An upload's model input is decoded by exactly the code `predict` uses on files (chestxray.data.imaging.load_square,
with its JPEG draft decode, as `prepare` stored the training images); the picture shown back is a full decode. The bytes
go to an anonymous in-memory file (Linux memfd) that the decoder opens by its /proc path, so nothing touches the
disk; elsewhere a temporary file is used and removed at once. Every refusal is an UploadError with the HTTP
status to send and a reason a person can act on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chestxray.errors import DataError
from chestxray.files import atomic_path

KINDS = {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM"}


class UploadError(Exception):
    """An upload the server refuses: HTTP status and the reason shown to the person."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Limits:
    """What the server accepts: bytes per upload, pixels per image (width x height, read from the header, before any
    decoding) and images decoded at once (the others wait their turn).

    25 MP is above any chest radiograph (a 4,300 x 4,300 detector is 18.5 MP) and below `prepare`'s 100 MP: a
    16-bit 25 MP PNG costs about 0.15 GB to decode, so two at a time stay near 0.3 GB whatever the load.
    """

    max_bytes: int = 20_000_000
    max_pixels: int = 25_000_000
    max_decodes: int = 2


def sniff(data: bytes) -> str | None:
    """'png', 'jpeg' or 'dicom' from the first bytes (DICOM: 'DICM' after the 128-byte preamble), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


def header_size(data: bytes, kind: str, name: str) -> tuple[int, int]:
    """(width, height) from the header alone, before any pixel is decoded (a decompression bomb stays packed)."""
    try:
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - any header failure is a damaged upload, reported with its reason
        if "decompression bomb" in str(exc).lower():
            raise UploadError(413, f"{name}: the header claims a huge image ({exc}); over the "
                                   "pixel limit, downscale the image") from None
        text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", name, " ".join(str(exc).split()))[:200]
        raise UploadError(422, f"{name}: damaged {KINDS[kind]} header ({text}); re-export the image") from None


def check_upload(data: bytes, name: str, limits: Limits) -> str:
    """The kind of a valid upload; raises UploadError (413 too big, 415 not an image, 422 damaged) otherwise."""
    if not data:
        raise UploadError(400, f"{name}: empty upload (0 bytes); choose a PNG, JPEG or DICOM file")
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{name}: {len(data) / 1e6:.1f} MB is over the {limits.max_bytes / 1e6:.0f} MB limit "
                               "per upload; downscale or crop the image")
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, f"{name}: not a PNG, JPEG or DICOM file by its content (starts with {data[:8]!r}); "
                               "the file name does not matter, the bytes do")
    width, height = header_size(data, kind, name)
    if width * height > limits.max_pixels:
        raise UploadError(413, f"{name}: {width}x{height} = {width * height / 1e6:.0f} megapixels is over the "
                               f"{limits.max_pixels / 1e6:.0f} MP limit; downscale the image")
    if width * height == 0:
        raise UploadError(422, f"{name}: the {KINDS[kind]} header gives no image size; re-export the image")
    return kind


@contextlib.contextmanager
def in_memory_path(data: bytes, suffix: str = "") -> Iterator[Path]:
    """A path the decoders can open that holds `data`: an anonymous RAM file on Linux, else a removed-at-once temp file."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("chestxray-upload")
        try:
            os.write(fd, data)
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(suffix=suffix) as fh:  # pragma: no cover - non-Linux fallback
        fh.write(data)
        fh.flush()
        yield Path(fh.name)


@dataclass(frozen=True)
class DecodedUpload:
    """An upload decoded for the model: the gray picture (maybe reduced, see decode_upload), the uint8 (size, size)
    model input, the full-resolution (H, W) and the part of the picture the input shows (fractions l, t, r, b)."""

    gray: np.ndarray
    square: np.ndarray
    shape: tuple[int, int]
    window: tuple[float, float, float, float]


def decode_upload(data: bytes, name: str, size: int, resize: str, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 gray image, uint8 (size, size) model input) of a checked upload, decoded exactly as load_square decodes
    files for predict: a JPEG at the smallest DCT scale still 2 x `size` (draft), so the gray image may be reduced."""
    decoded = decode_for_model(data, name, size, resize, limits)
    return decoded.gray, decoded.square


def decode_for_model(data: bytes, name: str, size: int, resize: str, limits: Limits) -> DecodedUpload:
    """decode_upload plus the full-resolution shape and the window of the picture that the model input shows."""
    from chestxray.data.imaging import fit_square, input_window, load_gray_reduced

    check_upload(data, name, limits)
    with in_memory_path(data) as path:
        try:
            gray, shape = load_gray_reduced(path, size, max_pixels=limits.max_pixels)  # the decoders' guard too
        except DataError as exc:
            raise UploadError(422, str(exc).replace(str(path), name)) from None
    shape = (int(shape[0]), int(shape[1]))
    return DecodedUpload(gray, fit_square(gray, size, resize, source_shape=shape), shape,
                         input_window(shape, size, resize))


def keep_upload(data: bytes, name: str, folder: Path, stamp: str) -> Path:
    """Store an upload as folder/<stamp>-<sha256 prefix>-<safe name> (only with --keep-uploads), atomically."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[-80:] or "upload"
    path = folder / f"{stamp}-{hashlib.sha256(data).hexdigest()[:12]}-{safe}"
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
