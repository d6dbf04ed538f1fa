"""Fuzzed decoding: a few seconds of bench/bench_fuzz.py (mutated real PNG/JPEG/DICOM bytes), and every input the
long runs found, rebuilt from the shared samples by its recorded patch: each must decode or be refused with the
project's one-line DataError naming the file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from chestxray.data.imaging import load_square
from chestxray.errors import DataError

REPO = Path(__file__).resolve().parents[2]
REGRESSIONS = json.loads((Path(__file__).with_name("fuzz_regressions.json")).read_text())


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fuzz", REPO / "bench" / "bench_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", REGRESSIONS, ids=lambda c: c["found"].split(" ")[0])
def test_inputs_found_by_fuzzing_are_refused_clearly(case, shared_data, tmp_path):
    bench = _bench()
    original = next(shared_data.rglob(case["seed"])).read_bytes()
    path = tmp_path / f"input{Path(case['seed']).suffix}"
    path.write_bytes(bench.apply_patch(original, case["patch"]))
    try:
        assert load_square(path, 64).shape == (64, 64)
    except DataError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


def test_short_fuzz_run_finds_no_failure_crash_or_hang(shared_data):
    bench = _bench()
    seeds = [s for s in bench.real_seeds(shared_data) if s[0].startswith("small-") or s[0].endswith(".dcm")]
    counts, problems = bench.fuzz(6, seeds, save=None, examples=25, timeout=20)
    assert not problems, problems[:5]
    assert sum(counts.values()) >= 20 and {fmt for fmt, _ in counts} >= {"png", "jpg", "dcm"}
    assert counts[("png", "refused")] + counts[("jpg", "refused")] > 0
    assert np.sum([v for (_, o), v in counts.items() if o == "ok"]) > 0
