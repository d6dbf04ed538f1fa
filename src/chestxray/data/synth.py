"""A synthetic chest-X-ray-like dataset in NIH layout, for tests and demos: strong, known-location findings.

Each image is a gray torso with two dark lungs, a bright spine and a heart shadow; findings are drawn as
clearly visible structures (Nodule: bright disc in a mid lung; Effusion: bright band at a lung base;
Cardiomegaly: heart shadow about 1.6x wider; Pneumothorax: black region at a lung apex) and their boxes go to
boxes.csv, so a small CNN learns them in a couple of epochs and explanations can be scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chestxray.errors import ConfigError
from chestxray.files import atomic_path, write_csv, write_text

FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Effusion", "Nodule", "Pneumothorax")
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
README = """SYNTHETIC DATA - not real chest X-rays.

Made by chestxray.data.synth.make_synthetic(n={n}, size={size}, seed={seed}) for tests and demos.
labels.csv follows the NIH ChestX-ray14 Data_Entry_2017_v2020.csv layout; images/ holds 8-bit gray PNGs;
boxes.csv gives each drawn finding's box (Image Index, Finding Label, x, y, w, h in image pixels).
Findings: Nodule = bright disc in a mid lung (between apex and base); Effusion = bright band at a lung base;
Cardiomegaly = enlarged heart shadow; Pneumothorax = black region at a lung apex; No Finding = none drawn.
"""


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipse in unit coordinates (xx a row vector, yy a column vector)."""
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) in pixels of a mask's bounding box."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def draw_image(findings: set[str], size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, tuple]]:
    """One (size, size) uint8 image with the given findings drawn, and each finding's (x, y, w, h) box."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = grid[:, None], grid[None, :]
    dx, dy = rng.uniform(-0.03, 0.03, size=2)
    img = np.full((size, size), 25.0, dtype=np.float32)
    img[_ellipse(xx, yy, 0.5 + dx, 0.55 + dy, 0.46, 0.52)] = 150.0
    sides = {"left": 0.31 + dx, "right": 0.69 + dx}
    lungs = {s: _ellipse(xx, yy, cx, 0.45 + dy, 0.14, 0.29) for s, cx in sides.items()}
    texture = 70.0 + 12.0 * np.sin(xx * 40 + rng.uniform(0, 6)) * np.sin(yy * 35 + rng.uniform(0, 6))
    for mask in lungs.values():
        img[mask] = texture[mask]
    img[(np.abs(xx - 0.5 - dx) < 0.035) & (yy > 0.08 + dy)] = 185.0
    heart_rx = 0.21 if "Cardiomegaly" in findings else 0.12
    heart = _ellipse(xx, yy, 0.55 + dx, 0.63 + dy, heart_rx, 0.11)
    img[heart] = 175.0
    boxes: dict[str, tuple] = {}
    if "Cardiomegaly" in findings:
        boxes["Cardiomegaly"] = _box(heart)
    if "Effusion" in findings:
        side = rng.choice(list(sides))
        band = lungs[side] & (yy > 0.60 + dy)
        img[band] = 215.0
        boxes["Effusion"] = _box(band)
    if "Pneumothorax" in findings:
        side = rng.choice(list(sides))
        lateral = (xx < sides[side]) if side == "left" else (xx > sides[side])
        apex = lungs[side] & (yy < 0.36 + dy) & lateral
        img[apex] = 3.0
        boxes["Pneumothorax"] = _box(apex)
    if "Nodule" in findings:
        side = rng.choice(list(sides))
        cx, cy = sides[side] + rng.uniform(-0.05, 0.05), 0.47 + dy + rng.uniform(-0.05, 0.05)
        blob = _ellipse(xx, yy, cx, cy, 0.055, 0.055)
        img[blob] = 240.0
        boxes["Nodule"] = _box(blob)
    img += 6.0 * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(img * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8), boxes


def make_synthetic(out_dir: str | Path, n: int = 200, size: int = 128, seed: int = 0,
                   findings_p: float = 0.3) -> Path:
    """Write n synthetic images (NIH layout: labels.csv, images/*.png, boxes.csv, README.txt) into out_dir.

    Each finding appears independently with probability findings_p; patients have 1-4 images each.
    """
    if n < 1 or size < 16:
        raise ConfigError(f"synthetic data needs n >= 1 and size >= 16 (got n={n}, size={size})")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, box_rows = [], []
    patient, follow_up, left = 0, 0, 0
    for _ in range(n):
        if left == 0:
            patient, follow_up, left = patient + 1, 0, int(rng.integers(1, 5))
            age, sex = int(rng.integers(20, 85)), str(rng.choice(["M", "F"]))
        name = f"{patient:08d}_{follow_up:03d}.png"
        findings = {f for f in FINDINGS if rng.random() < findings_p}
        img, boxes = draw_image(findings, size, rng)
        with atomic_path(out / "images" / name) as tmp:
            Image.fromarray(img).save(tmp, format="PNG", compress_level=1)
        label = "|".join(sorted(findings)) or "No Finding"
        rows.append((name, label, follow_up, patient, age, sex, str(rng.choice(["PA", "AP"])), size, size, 0.143, 0.143))
        box_rows += [(name, f, *b) for f, b in sorted(boxes.items())]
        follow_up, left = follow_up + 1, left - 1
    table = pd.DataFrame(rows)
    write_text(out / "labels.csv", NIH_HEADER + "\n" + table.to_csv(index=False, header=False, lineterminator="\n"))
    write_csv(out / "boxes.csv", pd.DataFrame(box_rows, columns=["Image Index", "Finding Label", "x", "y", "w", "h"]))
    write_text(out / "README.txt", README.format(n=n, size=size, seed=seed))
    return out


def write_png_bomb(path: str | Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid all-black 8-bit gray PNG of width × height that is tiny on disk (a decompression bomb: 30,000² is
    0.9 GB decoded, 0.9 MB stored), built in about a second without ever holding the pixels in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = next(r for r in (1000, 100, 10, 1) if height % r == 0)
    block = (b"\0" * (width + 1)) * rows  # each row: filter byte 0, then zero pixels
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)  # a full flush makes every later block identical
    again = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows):
        adler = zlib.adler32(block, adler)
    stream = first + again * (height // rows - 1) + b"\x03\x00" + struct.pack(">I", adler)  # empty final block
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path
