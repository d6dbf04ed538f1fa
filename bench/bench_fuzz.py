"""Fuzz benchmark: mutated bytes of real PNG, JPEG and DICOM samples through the decoder, for a fixed time budget.

Seeds: real files from the shared samples (NIH PNG, Kaggle JPEG, SIIM DICOM), plus small re-encodings of the same
images (64-128 px PNG and JPEG) so that more mutations per second reach deep into the decoders. Hypothesis draws
the mutations (bit flips, byte overwrites, insertions, deletions, truncation, copied ranges; half of them aimed at
the first 4 KiB where headers live) in rounds of `--examples` until the budget is spent.
Each input is decoded by chestxray.data.imaging.load_square in a separate worker process (killed and restarted
after a crash or a hang), and counted as one of:
  ok         decoded to a (size, size) uint8 image
  refused    DataError with one line that names the file (the project's own clear error)
  failure    any other exception, an error message that does not name the file or spans lines (input saved)
  crash      the worker process died (a native fault; input saved)
  hang       no answer within --timeout seconds (input saved)
Failures, crashes and hangs are saved under --save (default bench/results/fuzz-inputs/, not in git): the input,
and a recipe (<digest>.json: the seed file's name and a byte patch against it) that rebuilds it from the shared
samples; recipes of problems found and fixed go to tests/data/fuzz_regressions.json (no image data in the repo).
Counts go to bench/results/fuzz-<host>.csv.

Run: CHESTXRAY_DATA=../shared/data nice -n 19 .venv/bin/python bench/bench_fuzz.py --seconds 600
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import json
import multiprocessing as mp
import os
import resource
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from chestxray.data.samples import KAGGLE, NIH, find_sample_data

HERE = Path(__file__).resolve().parent
OUTCOMES = ("ok", "refused", "failure", "crash", "hang")
KINDS = ("flip", "set", "insert", "delete", "truncate", "copy")


def real_seeds(data: Path, per_format: int = 2) -> list[tuple[str, bytes]]:
    """(name, bytes): real PNG, JPEG and DICOM files, plus small PNG/JPEG re-encodings of the real images."""
    pngs = sorted((data / NIH / "images").rglob("*.png"))[:per_format]
    jpegs = sorted((data / KAGGLE).rglob("*.jpeg"))[:per_format]
    dicoms = sorted((data / "cxr-dicom-samples").glob("*.dcm"))[:per_format]
    seeds = [(p.name, p.read_bytes()) for p in [*pngs, *jpegs, *dicoms]]
    for path in [*pngs, *jpegs]:
        with Image.open(path) as im:
            small = im.convert("L").resize((96, 80))
        for fmt, ext in (("PNG", ".png"), ("JPEG", ".jpg")):
            buf = io.BytesIO()
            small.save(buf, fmt)
            seeds.append((f"small-{path.stem}{ext}", buf.getvalue()))
    if not seeds:
        raise SystemExit(f"no sample files under {data}; set CHESTXRAY_DATA")
    return seeds


def mutate(data: bytes, mutations: list[tuple[str, int, bool, bytes]]) -> bytes:
    """Apply (kind, position, aim at the header, bytes) mutations in order."""
    buf = bytearray(data)
    for kind, pos, header, payload in mutations:
        if not buf:
            break
        span = min(len(buf), 4096) if header else len(buf)
        i = pos % span
        if kind == "flip":
            buf[i] ^= 1 << (pos % 8)
        elif kind == "set":
            buf[i:i + len(payload)] = payload
        elif kind == "insert":
            buf[i:i] = payload
        elif kind == "delete":
            del buf[i:i + 1 + pos % 64]
        elif kind == "truncate":
            del buf[max(1, i):]
        elif kind == "copy":
            j = (pos // 7) % len(buf)
            buf[i:i] = buf[j:j + 1 + pos % 256]
    return bytes(buf)


def patch_of(original: bytes, changed: bytes) -> list[list]:
    """Byte patch [tag, start, end, hex replacement] (difflib opcodes, 'equal' left out) from original to changed."""
    matcher = difflib.SequenceMatcher(None, original, changed, autojunk=False)
    return [[tag, i1, i2, changed[j1:j2].hex()] for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def apply_patch(original: bytes, patch: list[list]) -> bytes:
    """Rebuild the changed bytes from the original and patch_of's patch."""
    out, pos = bytearray(), 0
    for _tag, i1, i2, replacement in patch:
        out += original[pos:i1] + bytes.fromhex(replacement)
        pos = i2
    return bytes(out + original[pos:])


def _worker(conn, size: int) -> None:
    """Decode inputs sent over `conn` in this process; answer (outcome, detail)."""
    from chestxray.data.imaging import load_square
    from chestxray.errors import DataError

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a runaway allocation fails, not the machine
    folder = tempfile.mkdtemp(prefix="fuzz-")
    while True:
        item = conn.recv()
        if item is None:
            return
        name, data = item
        path = os.path.join(folder, name)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            img = load_square(path, size)
            ok = img.shape == (size, size) and img.dtype == np.uint8
            conn.send(("ok", "") if ok else ("failure", f"bad output {img.dtype} {img.shape}"))
        except DataError as exc:
            text = str(exc)
            clear = text.startswith(f"{path}: ") and "\n" not in text
            conn.send(("refused", text[len(path) + 2:]) if clear else ("failure", f"unclear DataError: {text!r}"))
        except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
            conn.send(("failure", f"{type(exc).__name__}: {exc}"[:300]))
        finally:
            os.unlink(path)


class Decoder:
    """One worker process, restarted after a crash or a hang."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size, self.timeout = size, timeout
        self._start()

    def _start(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_worker, args=(child, self.size), daemon=True)
        self.proc.start()

    def decode(self, name: str, data: bytes) -> tuple[str, str]:
        try:
            self.conn.send((name, data))
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            outcome = ("hang", f"no answer in {self.timeout} s")
        except (EOFError, ConnectionResetError, BrokenPipeError):
            outcome = ("crash", "")
        if outcome[0] == "crash" or self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        code = self.proc.exitcode
        self._start()
        return outcome[0], outcome[1] or f"worker exit code {code}"

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def fuzz(seconds: float, seeds: list[tuple[str, bytes]], save: Path | None, size: int = 64, examples: int = 100,
         timeout: float = 20.0, start_seed: int = 0) -> tuple[Counter, list[dict]]:
    """Run rounds of Hypothesis-drawn mutations until `seconds` pass; (counts per (format, outcome), problems)."""
    counts: Counter = Counter()
    problems: list[dict] = []
    decoder = Decoder(size, timeout)
    deadline = time.monotonic() + seconds
    mutation = st.tuples(st.sampled_from(KINDS), st.integers(0, 2 ** 31), st.booleans(),
                         st.binary(min_size=1, max_size=16))

    def one(index: int, mutations: list) -> None:
        if time.monotonic() > deadline:
            return
        name, data = seeds[index]
        ext = Path(name).suffix
        fuzzed = mutate(data, mutations)
        outcome, detail = decoder.decode(f"input{ext}", fuzzed)
        counts[(ext.lstrip("."), outcome)] += 1
        if outcome not in ("ok", "refused"):
            digest = hashlib.sha256(fuzzed).hexdigest()[:16]
            problems.append({"seed": name, "outcome": outcome, "detail": detail, "input": f"{digest}{ext}"})
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"{digest}{ext}").write_bytes(fuzzed)
                recipe = {"seed": name, "outcome": outcome, "detail": detail, "patch": patch_of(data, fuzzed)}
                (save / f"{digest}.json").write_text(json.dumps(recipe) + "\n")

    round_no = start_seed
    try:
        while time.monotonic() < deadline:
            test = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                            suppress_health_check=list(HealthCheck))(
                given(st.integers(0, len(seeds) - 1), st.lists(mutation, min_size=1, max_size=6))(one))
            seed(round_no)(test)()
            round_no += 1
    finally:
        decoder.close()
    return counts, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--examples", type=int, default=100, help="Hypothesis examples per round")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before an input counts as a hang")
    parser.add_argument("--save", type=Path, default=HERE / "results" / "fuzz-inputs")
    parser.add_argument("--csv", type=Path, default=HERE / "results" / f"fuzz-{socket.gethostname()}.csv")
    args = parser.parse_args()
    data = find_sample_data(HERE)
    if data is None:
        raise SystemExit("sample data not found; set CHESTXRAY_DATA")
    seeds = real_seeds(data)
    start = time.perf_counter()
    counts, problems = fuzz(args.seconds, seeds, args.save, examples=args.examples, timeout=args.timeout)
    elapsed = time.perf_counter() - start
    rows = [{"format": fmt, **{o: counts[(fmt, o)] for o in OUTCOMES}}
            for fmt in sorted({f for f, _ in counts})]
    frame = pd.DataFrame(rows)
    total = int(frame[list(OUTCOMES)].to_numpy().sum())
    print(frame.to_string(index=False))
    print(f"{total} inputs in {elapsed:.0f} s ({total / elapsed:.0f}/s) from {len(seeds)} seeds; "
          f"{len(problems)} problem(s)")
    for p in problems[:20]:
        print(f"  {p['outcome']}: {p['input']} (from {p['seed']}): {p['detail']}")
    frame.assign(seconds=round(elapsed), seeds=len(seeds)).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
