"""The probe corpus of issue 22 as generators: each function writes one hostile or careless input into a folder and
returns what a test needs. No binary file is kept in the repository; docs/robustness.md lists every probe and how
the product answers it (one-line error, quarantine with its reason, or correct handling)."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def one_line_error(result, pattern: str) -> str:
    """Assert a CliRunner result is the product's answer to bad input: exit 1, exactly one 'error:' line matching
    `pattern`, no traceback. Returns that line."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


def png(path: Path, value: int | None = None, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """An 8-bit gray PNG (H, W) = size: noise from `seed`, or constant `value`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    else:
        pixels = np.full(size, value, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def sealed_manifest(labels: list[str], counts: dict[str, int], positives: dict[str, list[int]] | None = None,
                    image_size: int = 64, **fields: object) -> dict:
    """A manifest that passes check_manifest without shards on disk (one notional shard per split), for tests that
    only read its counts."""
    from chestxray.data.manifest import seal

    splits = {split: {"count": n, "shards": [f"{split}-000000.tar"], "shard_counts": [n], "shard_bytes": [512 * n],
                      "shard_sha256": ["0" * 64], "positives": (positives or {}).get(split, [0] * len(labels))}
              for split, n in counts.items()}
    return seal({"format": "chestxray-prepared/1", "labels": list(labels), "task": "multilabel",
                 "image_size": image_size, "resize": "pad", "splits": splits, **fields})


# --- catalogs: one patient, one image, one label, however they are written ----------------------------------------

def _findings_csv(root: Path, rows: list[tuple[str, str]]) -> Path:
    """root/t.csv with one noise PNG per (patient, finding) row: path,patient,finding."""
    lines = ["path,patient,finding"]
    for i, (patient, finding) in enumerate(rows):
        png(root / "img" / f"x{i}.png", seed=i)
        lines.append(f"img/x{i}.png,{patient},{finding}")
    (root / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "t.csv"


def patient_spellings(root: Path) -> Path:
    """A CSV where patient 1 is written '1', '1.0' and '01' (three images), beside patients 2..9."""
    return _findings_csv(root, [(pid, "Mass" if i % 2 else "No Finding")
                                for i, pid in enumerate(["1", "1.0", "01", *map(str, range(2, 10))])])


def same_file_three_ways(root: Path) -> Path:
    """A CSV naming one file as 'img/x.png', './img/x.png' and by its absolute path, as three patients."""
    png(root / "img" / "x.png")
    png(root / "img" / "y.png", seed=1)
    absolute = (root / "img" / "x.png").resolve()
    text = f"path,patient,finding\nimg/x.png,1,Mass\n./img/x.png,2,Mass\n{absolute},3,Mass\nimg/y.png,4,No Finding\n"
    (root / "t.csv").write_text(text, encoding="utf-8")
    return root / "t.csv"


def label_case_twins(root: Path) -> Path:
    """A CSV whose findings column spells one finding 'Mass' and 'mass'."""
    return _findings_csv(root, [(str(i), f) for i, f in enumerate(["Mass", "mass", "Mass", "No Finding", "Nodule",
                                                                    "No Finding"])])


def repeated_column(root: Path) -> Path:
    """A CSV whose header names 'Patient ID' twice (pandas would read the second as 'Patient ID.1')."""
    png(root / "img" / "x.png")
    (root / "t.csv").write_text("path,Patient ID,Patient ID,finding\nimg/x.png,1,2,Mass\n", encoding="utf-8")
    return root / "t.csv"


def class_folders(root: Path, classes: dict[str, int]) -> Path:
    """ROOT/CLASS/*.png with the given number of images per class (one patient per image)."""
    for cls, n in classes.items():
        for i in range(n):
            png(root / cls / f"{cls.lower()}{i}.png", seed=i)
    return root


def class_folder_link(root: Path, outside: Path) -> Path:
    """Class folders where PNEUMONIA is a symbolic link to a folder outside the tree."""
    class_folders(root, {"NORMAL": 4})
    class_folders(outside, {"PNEUMONIA": 4})
    os.symlink(outside / "PNEUMONIA", root / "PNEUMONIA", target_is_directory=True)
    return root


def non_utf8_name(root: Path) -> bytes:
    """Class folders holding one image whose file name is not UTF-8 (byte 0xff); returns that name as bytes."""
    class_folders(root, {"NORMAL": 3, "PNEUMONIA": 3})
    name = os.fsencode(root / "PNEUMONIA") + b"/bad\xff.png"
    with open(name, "wb") as fh:
        fh.write((root / "NORMAL" / "normal0.png").read_bytes())
    return name


# --- images a decoder accepts but a model should not learn from -------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_short_stream(path: Path, rows: int = 100, kept: int = 10, width: int = 64, depth: int = 8) -> Path:
    """A valid-looking gray PNG (8 or 16 bit) of `rows` rows whose zlib stream ends cleanly after `kept` rows (CRCs
    right): Pillow fills the rest with zeros without a word."""
    dtype = np.uint8 if depth == 8 else np.dtype(">u2")
    raw = b"".join(b"\x00" + ((np.arange(width) * 7 + 3 * r) % 256 * (1 if depth == 8 else 200)).astype(dtype).tobytes()
                   for r in range(kept))
    ihdr = struct.pack(">IIBBBBB", width, rows, depth, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def dicom(path: Path, pixels: np.ndarray, **attributes: object) -> Path:
    """A small MONOCHROME2 16-bit DICOM file with the given pixel array and extra attributes (e.g. WindowWidth=0)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "P1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(shape: tuple[int, int] = (64, 64), top: int = 4000) -> np.ndarray:
    """A 16-bit ramp: every row different, so no accidental constant image."""
    return np.linspace(0, top, shape[0] * shape[1]).reshape(shape).astype(np.uint16)


def degenerate_images(root: Path) -> dict[str, Path]:
    """One file per degenerate-image probe of issue 22, by name."""
    return {
        "short zlib stream": png_short_stream(root / "short.png"),
        "DICOM WindowWidth=0": dicom(root / "window0.dcm", gradient(), WindowCenter=2000, WindowWidth=0),
        "DICOM RescaleSlope=0": dicom(root / "slope0.dcm", gradient(), RescaleSlope=0, RescaleIntercept=0),
        "1x1 image": png(root / "one.png", size=(1, 1)),
        "1x5000 image": png(root / "line.png", size=(1, 5000)),
        "40x400 image": png(root / "strip.png", size=(40, 400)),
        "short zlib stream, 16 bit": png_short_stream(root / "short16.png", depth=16),
        "constant image": png(root / "constant.png", value=128, size=(64, 64)),
    }


# --- prepared folders: same-size damage and manifests that lie ---------------------------------------------------

def flip_label_bytes(shard: Path, samples: int = 3) -> int:
    """Turn the first label of the first `samples` sample records of a shard from 0 to 1 or back, in place: the
    shard keeps its size (the size check passes), only a checksum can tell. Returns how many bytes changed."""
    data = bytearray(shard.read_bytes())
    flipped, start = 0, 0
    while flipped < samples:
        at = data.find(b'"labels": [', start)
        if at < 0:
            break
        digit = at + len(b'"labels": [')
        data[digit] = ord("1") if data[digit] == ord("0") else ord("0")
        flipped, start = flipped + 1, digit
    shard.write_bytes(bytes(data))
    return flipped


def edit_manifest(folder: Path, change, reseal: bool = False) -> dict:
    """Apply `change(manifest) -> manifest` to folder/manifest.json; with `reseal` the digest is recomputed (a tool
    that rewrites the file properly but wrongly), else left stale (a hand edit). Returns what was written."""
    import json

    from chestxray.data.manifest import DIGEST, seal

    manifest = change(json.loads((folder / "manifest.json").read_text()))
    if reseal and isinstance(manifest, dict):
        manifest = seal({k: v for k, v in manifest.items() if k != DIGEST})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest
