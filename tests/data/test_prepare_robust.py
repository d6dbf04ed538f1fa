"""prepare under hostile input: decompression bombs, a decoder that crashes its process, kill -9 at several points,
and a second writer into the same folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data.catalog import Catalog, save_catalog
from chestxray.data.imaging import TEST_ABORT_ENV
from chestxray.data.prepare import KILL_ENV, prepare_dataset
from chestxray.data.synth import write_png_bomb
from chestxray.errors import ConfigError
from chestxray.locks import LOCK_FILE, folder_lock

LABELS = ("Effusion", "Mass")
CLI = [sys.executable, "-m", "chestxray"]


def _catalog(root: Path, n: int, extra: dict[str, Path] | None = None) -> Catalog:
    """n small gray PNGs (+ `extra` named files, all train), split by patient."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i % 5, 24), dtype=np.uint8)).save(path)
        rows.append((f"img{i:03d}", str(path), f"p{i}", ["train", "train", "val", "test"][i % 4], i % 2, i % 3 == 0))
    for j, (name, path) in enumerate((extra or {}).items()):
        rows.append((name, str(path), f"x{j}", "train", 1, 0))
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", *LABELS])
    table[list(LABELS)] = table[list(LABELS)].astype("uint8")
    return Catalog(table=table, labels=LABELS, source="test")


def test_bomb_and_crashing_decoder_are_quarantined_and_everything_else_prepared(tmp_path, monkeypatch):
    bomb = write_png_bomb(tmp_path / "bomb.png")  # 30,000 x 30,000: 0.9 GB decoded
    crash = tmp_path / "crashme.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(crash)
    catalog = _catalog(tmp_path / "imgs", 40, {"bomb": bomb, "crashme": crash})
    monkeypatch.setenv(TEST_ABORT_ENV, "crashme")  # the decoder calls os.abort() on this file (test-only hook)
    result = prepare_dataset(catalog, tmp_path / "prep", size=16, workers=2, shard_size=8)
    assert result.counts == {"train": 20, "val": 10, "test": 10}
    assert result.quarantined == 2 and result.crashed == 1
    assert "quarantined 2 (decoder crashed on 1)" in result.summary()
    reasons = dict(zip(result.quarantine["image_id"], result.quarantine["reason"]))
    assert reasons["crashme"].startswith("decoder process crashed")
    assert "30000 × 30000 px" in reasons["bomb"] and "limit of 100 megapixels" in reasons["bomb"]
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["quarantined"] == 2 and manifest["settings"]["max_pixels"] == 100_000_000


def _tree(folder: Path) -> dict[str, object]:
    """Every file of a PREPARED folder: bytes, except manifest.json without its creation time."""
    out: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.name == "manifest.json":
            manifest = json.loads(path.read_text())
            manifest.pop("created")
            out[path.name] = manifest
        else:
            out[path.name] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def killable(tmp_path_factory) -> tuple[Path, dict[str, object]]:
    """A saved catalog (60 images, 8 per shard) and the folder an uninterrupted prepare makes of it."""
    root = tmp_path_factory.mktemp("kill")
    catalog = _catalog(root / "imgs", 60, {"broken": root / "missing.png"})
    save_catalog(catalog, root / "catalog")
    reference = root / "reference"
    _prepare_cli(root / "catalog", reference)
    return root / "catalog", _tree(reference)


def _prepare_cli(catalog: Path, out: Path, kill_at: str | None = None, *, wait: bool = True
                 ) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, KILL_ENV: kill_at} if kill_at else dict(os.environ)
    env.pop(KILL_ENV, None) if not kill_at else None
    args = [*CLI, "prepare", str(catalog), "--out", str(out), "--size", "16", "--shard-size", "8", "-j", "2"]
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def _assert_no_orphans(out: Path) -> None:
    """No decoder worker of a killed prepare survives it (they die with their parent)."""
    import psutil

    deadline = time.monotonic() + 10
    while True:
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"decoder processes left behind: {left}"


def _check_same_as_uninterrupted(catalog: Path, out: Path, reference: dict[str, object]) -> None:
    rerun = _prepare_cli(catalog, out)
    assert rerun.returncode == 0, rerun.stderr
    assert "prepared train 30, val 15, test 15; quarantined 1" in rerun.stdout
    assert _tree(out) == reference  # same shards byte for byte, same manifest (sizes, checksums) and quarantine
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_FILE).exists()


def test_prepare_killed_with_sigkill_at_each_point_then_rerun_matches_an_uninterrupted_run(tmp_path, killable):
    """kill -9 during decoding, in the middle of a shard write, between a shard and its record, and in the middle
    of the manifest write (each run resumes the one killed before it); then a plain re-run finishes the job."""
    catalog, reference = killable
    out = tmp_path / "prep"
    for point in ("decode:3", "shard-write:2", "shard-done:1", "manifest:1"):
        killed = _prepare_cli(catalog, out, point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        assert not (out / "manifest.json").exists()
    _assert_no_orphans(out)
    _check_same_as_uninterrupted(catalog, out, reference)


def test_prepare_killed_from_outside_at_a_random_moment_then_rerun_matches(tmp_path, killable):
    catalog, reference = killable
    out = tmp_path / "prep"
    proc = _prepare_cli(catalog, out, wait=False)
    time.sleep(random.Random(0).uniform(0.8, 1.6))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) in (-signal.SIGKILL, 0)
    _assert_no_orphans(out)
    _check_same_as_uninterrupted(catalog, out, reference)


def test_second_prepare_into_a_locked_folder_is_refused_at_once_naming_the_owner(tmp_path, killable):
    catalog, _ = killable
    out = tmp_path / "prep"
    with folder_lock(out, "prepare"):
        second = _prepare_cli(catalog, out)
        with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} on host .*chestxray prepare"):
            prepare_dataset(catalog, out)
    assert second.returncode == 1
    assert second.stderr.strip().count("\n") == 0, second.stderr
    assert f"{out}: in use by pid {os.getpid()} on host" in second.stderr
    assert not (out / "manifest.json").exists()


def test_disk_full_names_the_folder_and_what_was_kept_then_a_rerun_goes_on(tmp_path, monkeypatch):
    """Issue 22: OSError [Errno 28] used to end prepare with a traceback. The full disk is simulated inside the
    atomic writer of the second shard (a tmpfs of a chosen size needs root mounts)."""
    import errno

    from typer.testing import CliRunner

    import chestxray.data.prepare as prepare_module
    from chestxray.cli import app
    from chestxray.files import atomic_path
    from tests.data import probes

    catalog = tmp_path / "catalog"
    save_catalog(_catalog(tmp_path / "src", 24), catalog)
    real, calls = prepare_module.write_shard, []

    def full(path, samples):
        calls.append(path)
        if len(calls) == 2:
            with atomic_path(path):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, samples)

    out = tmp_path / "prep"
    argv = ["prepare", str(catalog), "--out", str(out), "--size", "16", "--shard-size", "4", "--workers", "1"]
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_shard", full)
        line = probes.one_line_error(CliRunner().invoke(app, argv, terminal_width=400),
                                     rf"{out}: no space left on the device while writing {out}/\S+.tar")
    assert "kept 1 of 7 shard(s), finished and checked (.prepare-state.json); free some space, then run the same " \
           "command again: it goes on from them" in line
    assert not list(out.glob(".*.tmp")) and not (out / "manifest.json").exists()
    result = CliRunner().invoke(app, argv, terminal_width=400)
    assert result.exit_code == 0 and "resumed: 1 finished shard(s) kept" in result.output, result.output
