"""Robust decoding of PNG / JPEG / DICOM files to 8-bit grayscale, and the one square resize.

Rules (the same for prepare and predict):
- 8-bit gray pixels are kept as stored; RGB/RGBA/P/LA collapse to luminance (ITU-R 601, alpha ignored).
- 16-bit and 32-bit/float images are stretched by their own min/max to 0..255 (many 16-bit X-rays only use
  12 bits, so scaling by the nominal bit depth would leave them dark); a constant image becomes all zeros.
- DICOM: modality LUT (rescale slope/intercept), then a VOI LUT sequence or the first window centre/width
  when present (else min/max as above), then MONOCHROME1 is inverted so bone is always bright.
- EXIF orientation is applied (a rotated JPEG is stored upright).
- Images above a pixel limit (DEFAULT_MAX_PIXELS, width × height read from the header before any decoding) are
  refused: one guard for prepare, predict and every other caller of load_gray / load_square (check_pixels).
- Every unusable file raises DataError naming the file and the reason (missing, empty, truncated, corrupt,
  too large, not an image, unsupported DICOM compression).
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chestxray.errors import DataError

try:
    import pyspng as _spng
except ImportError:  # optional speed-up; Pillow decodes the same files
    _spng = None

log = logging.getLogger(__name__)
# We parallelise with processes (prepare pool, DataLoader workers). An OpenCV thread pool created in a parent
# process can deadlock its forked children, so OpenCV runs single-threaded (the usual PyTorch + OpenCV advice).
cv2.setNumThreads(0)

RESIZE_MODES: tuple[str, ...] = ("crop", "pad", "stretch")
DEFAULT_MAX_PIXELS = 100_000_000  # far above any real radiograph (a 4,300 × 4,300 detector is 18.5 MP)
# JPEG draft decoding (≥ 2 × target) then fit_square vs. a full decode then fit_square, in grey levels, at 32 px and
# above (bench/bench_draft.py on the 1,269 Kaggle JPEGs: mean 0.45 at 32 px, 0.24 at 64 px, 0 at 256 px; worst file
# 2.5; single pixels at sharp edges up to ~40). The letterbox geometry is identical (computed from the full size).
DRAFT_TOLERANCE = {"mean": 0.5, "worst_file_mean": 2.5}
TEST_ABORT_ENV = "CHESTXRAY_TEST_ABORT_ON"  # test-only: see _test_hook
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".dic")
MIN_SIDE, MAX_ASPECT = 16, 5  # check_content: a chest radiograph is larger and near square (0.7 to 1.5 wide per tall)
_EIGHT_BIT_MODES = {"L", "P", "RGB", "RGBA", "LA", "1", "CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"}


def load_gray(path: str | Path, target: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
              ) -> np.ndarray:
    """Decode an image file to a uint8 (H, W) grayscale array (EXIF orientation applied); raises DataError with
    the reason. Images above `max_pixels` (width × height from the file header, read before any decoding; None:
    no limit) are refused.

    `target` is a speed hint: JPEGs are decoded straight at the smallest DCT scale that is still at least
    2 × `target` px on both sides (libjpeg draft mode), so a later fit_square(…, target) sees nearly the same
    pixels as from a full decode (see DRAFT_TOLERANCE). Leave it None for full resolution.
    """
    return _decode(Path(path), target, max_pixels)[0]


def load_gray_reduced(path: str | Path, target: int, max_pixels: int | None = DEFAULT_MAX_PIXELS
                      ) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 pixels, full-resolution (H, W)): load_gray with the draft hint `target`, and the shape that
    fit_square(…, source_shape=) needs to give exactly what load_square gives (the server decodes uploads so)."""
    return _decode(Path(path), target, max_pixels)


def _decode(path: Path, target: int | None, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels, full-resolution (H, W) after orientation): pixels may be smaller than (H, W) in JPEG draft mode."""
    check_readable(path)
    _test_hook(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        arr = _load_dicom(path, max_pixels)
        return arr, arr.shape
    head = _read_head(path)
    if head[128:132] == b"DICM":
        arr = _load_dicom(path, max_pixels)
        return arr, arr.shape
    shape = _png_shape(head) or (_jpeg_shape(path) if head[:2] == b"\xff\xd8" else None)
    if shape is not None:
        check_pixels(path, shape, max_pixels)
    fast = _load_gray8_png(path) if _is_gray8_png(head) else None  # read the whole file only for that format
    if fast is not None:
        return fast, fast.shape
    return _load_pillow(path, target, max_pixels)


def check_pixels(path: str | Path, shape: tuple[int, ...], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Refuse an image whose (H, W[, frames]) from the header exceeds `max_pixels` (a decompression bomb guard)."""
    pixels = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if max_pixels is not None and pixels > max_pixels:
        dims = " × ".join(str(int(v)) for v in (shape[1], shape[0], *shape[2:]))
        raise DataError(f"{path}: image too large: {dims} px = {pixels / 1e6:.4g} megapixels, above the limit of "
                        f"{max_pixels / 1e6:g} megapixels (a decompression bomb or not a radiograph); remove it, or "
                        "raise the limit with --max-pixels if it is genuine")


def fit_square(img: np.ndarray, size: int, mode: str = "stretch", source_shape: tuple[int, int] | None = None
               ) -> np.ndarray:
    """Resize a uint8 (H, W) image to (size, size): 'stretch' (default) scales each side to `size` on its own (the
    whole image, no bars, anatomy squeezed by the aspect ratio); 'crop' scales the short side to `size` and keeps the
    centre square; 'pad' keeps the whole image, scaling the long side to `size` and centring it on black.

    No geometry hides an image's shape, which can predict the label by itself (Kaggle pneumonia images are wider):
    pad's bars are the aspect ratio, and crop and stretch still show it (chestxray.data.geometry). Stretch is the
    default because it keeps the whole image (crop discards up to 69 % of the width of Kaggle's widest images) and, on
    the Kaggle sample, leaves the least shape in a trained model's features (docs/audit.md, bench/bench_resize.py).
    `source_shape`: the full-resolution (H, W) when `img` is a reduced decode of it (JPEG draft); the geometry
    (letterbox size and offsets, crop window) is then computed from it, so it is identical to a full decode's.
    """
    if mode not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise DataError(f"fit_square expects a uint8 (H, W) image, got {img.dtype} {img.shape}")
    h, w = source_shape or img.shape
    if mode == "stretch":
        return np.ascontiguousarray(_resize(img, size, size))
    if mode == "crop":  # scale the short side to `size`, then take the centre at output resolution: the same
        # output geometry from a full or a reduced decode (cropping first would round the window in reduced pixels)
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return np.ascontiguousarray(_resize(img, new_h, new_w)[top:top + size, left:left + size])
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _resize(img, new_h, new_w)
    if new_h == size and new_w == size:
        return resized
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def input_window(shape: tuple[int, int], size: int, mode: str = "stretch") -> tuple[float, float, float, float]:
    """The part of an (H, W) image that fit_square(…, size, mode) shows the model, as fractions of the image
    (left, top, right, bottom): the centre square for 'crop', the whole image for 'pad' and 'stretch'."""
    if mode not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    h, w = shape
    if mode != "crop":
        return (0.0, 0.0, 1.0, 1.0)
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return (left / new_w, top / new_h, (left + size) / new_w, (top + size) / new_h)


def load_square(path: str | Path, size: int, mode: str = "stretch", max_pixels: int | None = DEFAULT_MAX_PIXELS
                ) -> np.ndarray:
    """Decode and resize a file to uint8 (size, size): exactly what prepare stores and predict must feed. An image
    no model should learn from or be scored on (check_content) is a DataError, which prepare quarantines."""
    img, shape = _decode(Path(path), size, max_pixels)
    check_content(img, shape, path)
    return fit_square(img, size, mode, source_shape=shape)


def check_content(img: np.ndarray, shape: tuple[int, ...], path: str | Path) -> None:
    """Refuse an image a decoder accepts but that is no radiograph to learn from: smaller than MIN_SIDE px on a side
    (a 1 × 1 or 1 × 5000 strip), longer than MAX_ASPECT times its width or height, or one grey level everywhere
    (a blank or failed export; a constant image is also what a zero DICOM rescale slope or a binarising window make).
    `shape` is the full-resolution (H, W), `img` the decoded pixels (reduced for a JPEG draft decode)."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_SIDE:
        raise DataError(f"{path}: image is {w} × {h} px, below {MIN_SIDE} px on a side: not a radiograph (an icon, "
                        "a strip or a failed export); remove it or export the full image")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise DataError(f"{path}: image is {w} × {h} px, an aspect ratio beyond {MAX_ASPECT}:1: not a radiograph "
                        "(a strip, a banner or a failed export); remove it or export the full image")
    lo, hi = cv2.minMaxLoc(img)[:2]
    if lo == hi:
        raise DataError(f"{path}: every pixel has the same grey level ({int(lo)}): a blank image or a failed export "
                        "(or a DICOM window/rescale that erases it); remove it or re-export the file")


def _test_hook(path: Path) -> None:
    """Test-only: abort this process (a native decoder crash) for a file whose name contains $CHESTXRAY_TEST_ABORT_ON.

    Lets tests show that prepare survives a decoder that dies (tests/data/test_prepare_robust.py); unset in real use.
    """
    marker = os.environ.get(TEST_ABORT_ENV)
    if marker and marker in path.name:
        os.abort()


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch any numeric array to uint8 by its own min/max (constant input → zeros); uint8 passes through."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2 and arr.size > 65536:  # 16-bit: a lookup table, the same
        lo, hi = int(arr.min()), int(arr.max())  # float32 arithmetic per level, without float copies of the image
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        return _stretch(np.arange(hi + 1, dtype=np.float32), float(lo), float(hi))[arr]
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.nanmin(np.where(finite, arr, np.nan)) if finite.any() else 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return _stretch(arr, lo, hi)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 values mapped linearly from [lo, hi] to uint8 0..255, rounded half up."""
    return np.clip((values - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area averaging when shrinking (no aliasing; cv2 reduces large factors fast), bilinear when enlarging."""
    if img.shape == (h, w):
        return np.ascontiguousarray(img)
    shrinking = h <= img.shape[0] and w <= img.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interp)


def check_readable(path: Path, noun: str = "file", fix_missing: str = "fix the path in the catalog or remove the row",
                   fix_folder: str = "point the catalog row at a file inside it") -> None:
    """Raise DataError for a missing, folder, empty or unreadable path (one stat call); the wording of the
    defaults suits catalog rows, callers without a catalog (predict) pass their own."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: {noun} not found; {fix_missing}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {noun} ({exc.strerror or exc}); check the path and permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a folder, not an image file; {fix_folder}")
    if st.st_size == 0:
        raise DataError(f"{path}: empty {noun} (0 bytes); re-copy or re-export it")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read the {noun} (permission denied); fix the file permissions")


def _read_head(path: Path) -> bytes:
    """The first 132 bytes: enough for the DICOM magic (bytes 128..131) and a PNG's IHDR fields."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from None


def _is_gray8_png(data: bytes) -> bool:
    """PNG signature, then IHDR: bit depth 8 (byte 24), colour type 0 = grayscale (byte 25), no interlace (byte 28)."""
    return (len(data) >= 33 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 8 and data[25] == 0
            and data[28] == 0)


def _load_gray8_png(path: Path) -> np.ndarray | None:
    """Fast path for the common X-ray file, an 8-bit grayscale PNG: libspng (SIMD unfiltering, ~2× Pillow).

    Returns None (use Pillow) for any other file, when pyspng is missing, or when spng fails, so that Pillow
    produces the specific error reason.
    """
    if _spng is None:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if not _is_gray8_png(data):
        return None
    if not _png_crcs_ok(data):  # spng does not verify checksums; a damaged file goes to Pillow for its reason
        return None
    if b"eXIf" in data:  # an EXIF chunk may carry an orientation: Pillow applies it
        return None
    try:
        arr = _spng.load(data)
    except Exception:  # noqa: BLE001 - any spng failure falls back to Pillow, which names the problem
        return None
    return arr[..., 0] if arr.ndim == 3 else arr


def _png_crcs_ok(data: bytes) -> bool:
    """True when every PNG chunk is complete with a matching CRC-32 and the file ends with IEND."""
    view, pos, end = memoryview(data), 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(view[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = stop + 4
    return False


def _load_pillow(path: Path, target: int | None, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Any Pillow format → (uint8 gray, full-resolution (H, W) after EXIF orientation); size checked before load."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies (check_pixels)
            with Image.open(path) as im:
                width, height = im.size
                check_pixels(path, (height, width), max_pixels)
                if target and im.format == "JPEG" and im.mode in ("L", "RGB", "CMYK", "YCbCr"):
                    im.draft("L", (2 * target, 2 * target))
                im.load()
                orientation = _orientation(im)
                if orientation in (5, 6, 7, 8):
                    width, height = height, width
                out = im if orientation in (1, None) else ImageOps.exif_transpose(im)
                gray = pil_to_gray(out)
                if im.format == "PNG" and not gray[-1].any():  # the mark of a stream that ended early (zero-filled)
                    _check_png_stream(path)
                return gray, (height, width)
    except DataError:
        raise
    except UnidentifiedImageError:
        with open(path, "rb") as fh:
            head = fh.read(8)
        raise DataError(f"{path}: not an image (unrecognised format, starts with {head!r}); remove it or "
                        "replace it with a PNG, JPEG or DICOM file") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc}); remove it") from None
    except Exception as exc:  # noqa: BLE001 - codecs raise many types (OSError, SyntaxError, struct.error, …)
        msg = _brief(exc) if not isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)) else \
            " ".join(str(exc).split())[:200] or type(exc).__name__
        kind = "truncated image data" if "truncat" in msg.lower() else "corrupt image data"
        raise DataError(f"{path}: {kind} ({msg}); re-copy or re-export the file") from None


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png_stream(path: Path) -> None:
    """Raise DataError when a PNG's compressed pixel stream ends (cleanly) before the last row: Pillow then fills the
    missing rows with black without a word. Inflates the IDAT data once; called only when the last row is black."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"IHDR":
            header = data[pos + 8:pos + 21]
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or len(header) < 13 or header[9] not in _PNG_CHANNELS:
        return
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    bits = header[8] * _PNG_CHANNELS[header[9]]
    passes = _ADAM7 if header[12] == 1 else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            expected += rows * (1 + -(-(cols * bits) // 8))
    try:
        inflater = zlib.decompressobj()
        got = len(inflater.decompress(b"".join(idat), expected + 1))
    except zlib.error:
        return  # a damaged stream: the decoder's own error stands
    if got < expected:
        rows = f"{got // (1 + -(-(width * bits) // 8))} of {height} rows" if len(passes) == 1 else \
            f"{got:,} of {expected:,} bytes"
        raise DataError(f"{path}: truncated image data: the compressed pixels end after {rows} (a decoder fills the "
                        "rest with black); re-copy or re-export the file")


def _orientation(im: Image.Image) -> int | None:
    """EXIF orientation tag (1..8) or None; a damaged EXIF block counts as none."""
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - EXIF is optional metadata; broken EXIF must not lose the image
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _png_shape(head: bytes) -> tuple[int, int] | None:
    """(H, W) from a PNG's IHDR, or None when `head` is not a PNG."""
    if len(head) >= 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from a JPEG's first start-of-frame marker, skipping other segments by seeking; None if not found."""
    try:
        with open(path, "rb") as fh:
            fh.seek(2)
            for _ in range(10_000):
                marker = fh.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                if marker[1] == 0xFF:  # fill byte: the marker code follows
                    fh.seek(-1, 1)
                    continue
                if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD8:  # markers without a length
                    continue
                length = int.from_bytes(fh.read(2), "big")
                if marker[1] in _SOF:
                    body = fh.read(5)
                    return (int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")) \
                        if len(body) == 5 else None
                if length < 2:
                    return None
                fh.seek(length - 2, 1)
    except OSError:
        return None
    return None


def pil_to_gray(im: Image.Image) -> np.ndarray:
    """Pillow image of any mode → uint8 (H, W) following the module rules."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0).convert("L"), dtype=np.uint8).copy()
    if mode in ("RGBA", "RGBa", "RGBX", "P", "PA"):  # alpha dropped; palette indices mapped to their colours
        return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8).copy()
    if mode in _EIGHT_BIT_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise DataError(f"{getattr(im, 'filename', '')}: unexpected {mode} image shape {arr.shape}; "
                            "convert it to 8-bit gray PNG")
        return to_uint8(arr)
    raise DataError(f"{getattr(im, 'filename', '')}: unsupported image mode {mode!r}; convert it to 8-bit gray PNG")


def _load_dicom(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A DICOM file → uint8 gray; every failure, whatever pydicom or a codec raises, is a one-line DataError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns per odd value; the outcome is an image or a DataError
        try:
            return _read_dicom(path, max_pixels)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - elements are parsed lazily: a damaged file fails anywhere, any type
            raise DataError(f"{path}: corrupt DICOM data ({_brief(exc)}); re-export the file") from None


def _brief(exc: BaseException) -> str:
    """'Type: message' on one line, at most ~200 characters (messages may quote raw bytes)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}"


def _read_dicom(path: Path, max_pixels: int | None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DataError(f"{path}: not a valid DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: truncated or corrupt DICOM header ({exc}); re-export the file") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (a report or structured document?)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), *((frames,) if frames > 1 else ()))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: corrupt DICOM image size attributes ({exc}); re-export the file") from None
    check_pixels(path, shape, max_pixels)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name, text = getattr(syntax, "name", str(syntax)), " ".join(str(exc).split())
        if "missing" in text or "no pixel data handler" in text.lower():
            raise DataError(f"{path}: no decoder installed for DICOM transfer syntax {name} ({text}); install one: "
                            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg") from None
        raise DataError(f"{path}: corrupt compressed DICOM pixel data ({name}: {text}); re-export the file") from None
    except (ValueError, EOFError, OSError, KeyError, AttributeError) as exc:
        raise DataError(f"{path}: truncated or corrupt DICOM pixel data ({exc}); re-export the file") from None
    return dicom_to_gray(ds, arr, where=str(path))


def dicom_to_gray(ds, arr: np.ndarray, where: str = "DICOM") -> np.ndarray:
    """Apply modality LUT, VOI LUT/window and MONOCHROME1 inversion to decoded DICOM pixels → uint8 (H, W)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        log.info("%s: %d frames; using the first", where, frames)
        arr = arr[0]
    if samples == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DataError(f"{where}: colour DICOM with unexpected pixel shape {arr.shape}")
        return cv2.cvtColor(to_uint8(arr) if arr.dtype != np.uint8 else arr, cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise DataError(f"{where}: DICOM pixel array has shape {arr.shape}; expected one 2-D frame")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    has_modality = "RescaleSlope" in ds or "ModalityLUTSequence" in ds
    _check_rescale_and_window(ds, where)
    out: np.ndarray
    try:
        values = apply_modality_lut(arr, ds) if has_modality else arr
        if "VOILUTSequence" in ds:
            lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            voi = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float32)
            out = np.clip(voi * (255.0 / (2 ** lut_bits - 1)) + 0.5, 0, 255).astype(np.uint8)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            out = _window(values, ds)
        elif arr.dtype == np.uint8 and bits <= 8 and not has_modality:
            out = arr
        else:
            out = to_uint8(np.asarray(values))
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        raise DataError(f"{where}: invalid DICOM LUT/window attributes ({exc})") from None
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def _check_rescale_and_window(ds, where: str) -> None:
    """Refuse header values that erase the image: a rescale slope of 0 (every pixel becomes the intercept) or not a
    number, and a window width below 1 (PS3.3 C.11.2.1.2 requires ≥ 1; 0 binarised the image at its centre)."""
    try:
        slope = float(ds.RescaleSlope) if "RescaleSlope" in ds else 1.0
        windowed = "WindowWidth" in ds and "WindowCenter" in ds and "VOILUTSequence" not in ds  # as dicom_to_gray
        width = _first(ds.WindowWidth) if windowed else 1.0
        center = _first(ds.WindowCenter) if windowed else 0.0
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{where}: unreadable DICOM RescaleSlope / window values ({exc}); fix the header") from None
    if slope == 0 or not np.isfinite(slope):
        raise DataError(f"{where}: DICOM RescaleSlope is {slope:g}: every pixel would become the intercept; fix the "
                        "header (the usual slope is 1) or remove the file")
    if not (np.isfinite(width) and np.isfinite(center)) or width < 1:
        raise DataError(f"{where}: DICOM WindowWidth {width:g} (centre {center:g}) is invalid: the standard requires "
                        "a width of at least 1 (0 turns the image into two grey levels); fix the header or remove "
                        "the WindowCenter/WindowWidth attributes")


def _window(values: np.ndarray, ds) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window (first centre/width) mapped to 0..255."""
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    x = np.asarray(values, dtype=np.float32)
    func = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if func == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    elif func == "LINEAR_EXACT":
        y = (x - center) / max(width, 1e-6) + 0.5
    else:
        y = (x - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _first(value) -> float:
    """First item of a possibly multi-valued DICOM number."""
    if not isinstance(value, (int, float)) and hasattr(value, "__len__"):
        value = value[0]
    return float(value)
