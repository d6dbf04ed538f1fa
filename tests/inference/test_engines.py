"""Scoring engines: a bundle's ONNX graph is exported once, cached beside it by the weights' hash, re-exported when
stale or damaged (with a warning), cached elsewhere (or kept in memory) when the bundle folder cannot be written,
agrees with PyTorch (probabilities and OOD features), and 'auto' falls back to PyTorch when the export fails."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from chestxray.errors import ConfigError, ModelError
from chestxray.inference import onnx_cache, runtime
from chestxray.inference.engines import bundle_backend, bundle_scorer
from chestxray.inference.onnx_cache import CACHE_META, CACHE_ONNX, scoring_graph
from chestxray.inference.onnx_graph import static_same_padding
from chestxray.inference.predict import torch_scorer
from chestxray.models import build_model
from chestxray.models.bundle import load_bundle, read_card, save_bundle

SIZE = 32
LABELS = ["a", "b", "c"]


def _bundle(folder: Path, seed: int = 0, arch: str = "cnn-tiny", size: int = SIZE) -> Path:
    torch.manual_seed(seed)
    return save_bundle(folder, build_model(arch, num_labels=len(LABELS), in_chans=1), {
        "architecture": arch, "num_labels": len(LABELS), "in_chans": 1, "image_size": size, "resize": "pad",
        "normalization": "gray", "labels": LABELS, "task": "multilabel"})


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return _bundle(tmp_path / "bundle")


def _pixels(n: int = 5, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.mark.parametrize("tta", ["none", "hflip", "crop"])
def test_onnxruntime_matches_pytorch_probabilities_and_features(bundle: Path, tta: str) -> None:
    assert_engines_agree(bundle, tta)


def assert_engines_agree(bundle: Path, tta: str = "none") -> None:
    """ONNX Runtime's probabilities within 1e-5 of PyTorch's, and the same OOD features per layer and forward."""
    ort_scorer = bundle_scorer(bundle, tta=tta, engine="onnxruntime")
    torch_scorer_ = torch_scorer(bundle, tta=tta, device="cpu")
    assert ort_scorer.backend.name == "onnxruntime" and torch_scorer_.backend.name == "torch"
    pixels = _pixels(size=read_card(bundle)["image_size"])
    with ort_scorer.backend.tap() as got, torch_scorer_.backend.tap() as want:
        probs_ort, probs_torch = ort_scorer.score(pixels), torch_scorer_.score(pixels)
    assert probs_ort.shape == (5, len(LABELS))
    assert np.abs(probs_ort - probs_torch).max() <= 1e-5
    assert list(got) == list(want) and "penultimate" in got
    for layer in want:
        assert len(got[layer]) == len(want[layer])  # one entry per forward (TTA view)
        assert np.allclose(np.concatenate(got[layer]), np.concatenate(want[layer]), atol=1e-5), layer


@pytest.mark.parametrize("size", [32, 37])
def test_same_padding_becomes_constant_and_folds_into_the_convolutions(tmp_path: Path, size: int) -> None:
    """EfficientNet-Lite0 (timm's tf_ port) pads 'same' from the input's shape at each call; the scoring graph pads
    by constants for the card's size, which ONNX Runtime folds into its convolutions: no Pad or Shape node is left
    in the graph it runs, the results still match PyTorch, and the bundle's own network is left as it was."""
    from timm.layers import Conv2dSame

    bundle = _bundle(tmp_path / "lite0", arch="efficientnet-lite0", size=size)
    assert_engines_agree(bundle)
    options = runtime.session_options()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    runtime.onnxruntime().InferenceSession(str(bundle / CACHE_ONNX), options, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(tmp_path / "optimized.onnx").graph.node}
    assert "Conv" in ops and not ops & {"Pad", "Shape", "ReduceMean"}, ops
    net = load_bundle(bundle).net.eval()
    x = torch.rand(2, 1, size, size)
    static = static_same_padding(net, x[:1])
    same_convs = [sum(isinstance(m, Conv2dSame) for m in n.modules()) for n in (net, static)]
    assert same_convs[0] > 0 and same_convs[1] == 0
    with torch.no_grad():
        assert torch.allclose(static(x), net(x), atol=1e-6)


def test_exported_once_then_read_from_the_cache(bundle: Path) -> None:
    card = read_card(bundle)
    first = scoring_graph(bundle, card)
    assert first.exported and first.where == "bundle" and first.model == bundle / CACHE_ONNX
    meta = json.loads((bundle / CACHE_META).read_text())
    assert meta["key"] == onnx_cache.cache_key(bundle, card) and "penultimate" in meta["feature_layers"]
    again = scoring_graph(bundle, card)
    assert not again.exported and again.model == bundle / CACHE_ONNX
    # thresholds and metrics are not in the graph: evaluate's card update keeps the cache
    assert onnx_cache.cache_key(bundle, {**card, "thresholds": {"a": 0.3}}) == meta["key"]
    assert onnx_cache.cache_key(bundle, {**card, "normalization": "imagenet"}) != meta["key"]


def test_new_weights_or_a_damaged_file_are_exported_again_with_a_warning(bundle: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    before = bundle_scorer(bundle, engine="onnxruntime").score(_pixels())
    _bundle(bundle, seed=1)  # retrained into the same folder: the cached graph is stale
    with caplog.at_level(logging.WARNING):
        after = bundle_scorer(bundle, engine="onnxruntime").score(_pixels())
    assert "made for other weights or another card" in caplog.text
    assert not np.allclose(before, after)
    assert np.abs(after - torch_scorer(bundle, device="cpu").score(_pixels())).max() <= 1e-5
    data = (bundle / CACHE_ONNX).read_bytes()
    (bundle / CACHE_ONNX).write_bytes(data[: len(data) // 2])  # truncated by a full disk, say
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        graph = scoring_graph(bundle, read_card(bundle))
    assert graph.exported and "does not match its recorded hash" in caplog.text
    assert (bundle / CACHE_ONNX).read_bytes() == data


def _read_only(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Writes into `folders` fail as on a read-only mount (chmod does not stop root, who runs CI here)."""
    real = onnx_cache._write

    def write(onnx: Path, *args, **kwargs) -> None:
        if any(onnx.parent == f for f in folders):
            raise OSError(30, "Read-only file system")
        real(onnx, *args, **kwargs)

    monkeypatch.setattr(onnx_cache, "_write", write)


def test_a_read_only_bundle_caches_in_the_user_cache_or_in_memory(bundle: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    users = tmp_path / "user-cache"
    _read_only(monkeypatch, bundle)
    card = read_card(bundle)
    graph = scoring_graph(bundle, card, cache_dir=users)
    assert graph.where == "user cache" and Path(graph.model).parent == users and not (bundle / CACHE_ONNX).exists()
    assert not scoring_graph(bundle, card, cache_dir=users).exported  # found there next time
    _read_only(monkeypatch, bundle, users / "nowhere")
    monkeypatch.setattr(onnx_cache, "user_cache_dir", lambda: users / "nowhere")
    with caplog.at_level(logging.WARNING):
        graph = scoring_graph(bundle, card)
    assert graph.where == "memory" and isinstance(graph.model, bytes)
    assert "could not cache the ONNX scoring graph" in caplog.text and "Read-only file system" in caplog.text
    scorer = bundle_scorer(bundle, engine="onnxruntime")  # the in-memory graph scores like the cached one
    assert np.abs(scorer.score(_pixels()) - torch_scorer(bundle, device="cpu").score(_pixels())).max() <= 1e-5


def test_auto_falls_back_to_pytorch_when_the_export_fails(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def fail(folder: Path, loaded) -> None:
        raise ModelError(f"{folder}: ONNX export of 'cnn-tiny' failed (UnsupportedOperatorError: aten::magic)")

    monkeypatch.setattr(onnx_cache, "_export", fail)
    monkeypatch.setattr(runtime, "gpu_present", lambda: False)
    with caplog.at_level(logging.WARNING):
        backend = bundle_backend(bundle)
    assert backend.name == "torch" and "aten::magic" in caplog.text and "scoring with PyTorch instead" in caplog.text
    with pytest.raises(ModelError, match="aten::magic"):
        bundle_backend(bundle, engine="onnxruntime")


def test_engine_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "gpu_present", lambda: False)
    assert runtime.resolve_engine("auto") == "onnxruntime"
    assert runtime.resolve_engine("auto", "cpu") == "onnxruntime"
    assert runtime.resolve_engine("auto", "cuda") == "torch"
    assert runtime.resolve_engine("torch", "cpu") == "torch"
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)
    assert runtime.resolve_engine("auto") == "torch"
    assert runtime.resolve_engine("auto", "cpu") == "onnxruntime"  # a CPU asked for: onnxruntime even beside a GPU
    with pytest.raises(ConfigError, match="runs on the CPU"):
        runtime.resolve_engine("onnxruntime", "cuda:0")
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'"):
        runtime.resolve_engine("tensorrt")


def test_session_uses_the_usable_cores_without_spinning() -> None:
    cores = runtime.usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    options = runtime.session_options()
    assert options.intra_op_num_threads == cores and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert runtime.session_options(threads=1).intra_op_num_threads == 1


def test_a_cached_bundle_scores_without_export_or_telemetry_files(bundle: Path, tmp_path: Path) -> None:
    """A fresh process scores a cached bundle through onnxruntime without exporting again, without importing torch
    and without a writable temp folder: onnxruntime's telemetry (which writes $TMPDIR/.ses at import) stays off."""
    bundle_scorer(bundle, engine="onnxruntime")  # export and cache
    stamp = (bundle / CACHE_ONNX).stat().st_mtime_ns
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    code = ("import sys, numpy as np; from chestxray.inference.stream import open_scorer; "
            f"s = open_scorer({str(bundle)!r}, device='cpu'); p = s.score(np.zeros((2, {SIZE}, {SIZE}), np.uint8)); "
            "print(s.backend.name, p.shape, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != runtime.TELEMETRY_OFF}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, "TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["onnxruntime", "(2,", "3)", "False"]  # torch was never imported
    assert (bundle / CACHE_ONNX).stat().st_mtime_ns == stamp
    assert list(tmp.iterdir()) == []
