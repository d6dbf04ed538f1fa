"""One scoring path: the same real images (JPEG gray and RGB, PNG, DICOM) get the same probabilities and decisions
from evaluate, predict (bundle and ONNX), the MLflow pyfunc (paths and arrays), serve (real HTTP) and explain,
with the stored test-time augmentation on (hflip, and ten-crop as the CheXNet reproductions score) and off, and on
both engines: a bundle scores through its cached
ONNX graph (onnxruntime) on the CPU by default and through PyTorch when asked, within 1e-4 and with the same
decisions and OOD flags. See docs/scoring.md and docs/performance.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from typer.testing import CliRunner

from chestxray.cli import app
from tests.deploy.conftest import free_port, running

SIZE = 32
LABEL = "PNEUMONIA"
TORCH_TOL = 1e-4  # between paths on one engine (batch composition changes the last float32 bits only)
ONNX_TOL = 1e-4  # onnxruntime vs PyTorch kernels
pytestmark = pytest.mark.slow  # trains, evaluates twice and starts two servers: about a minute on 2 cores


def _images(data: Path) -> dict[str, list[Path]]:
    """Real files by split: the test split holds every format the scoring path decodes."""
    kaggle = data / "kaggle-chest-xray-pneumonia"
    normal = sorted((kaggle / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((kaggle / "PNEUMONIA").glob("*.jpeg"))
    nih = sorted((data / "nih-chestxray14" / "images").glob("*.png"))
    test = [normal[0], kaggle / "PNEUMONIA" / "person1052_virus_1751.jpeg",  # 8-bit gray and RGB JPEGs
            nih[0], nih[1], sorted((data / "covid-chestxray-dataset" / "images").glob("*.png"))[0],  # PNGs
            *sorted((data / "cxr-dicom-samples").glob("*.dcm"))]  # DICOM MONOCHROME2 and MONOCHROME1
    return {"train": [*normal[1:9], *pneumonia[:8]], "val": [*normal[9:13], *pneumonia[8:12]], "test": test}


@pytest.fixture(scope="module")
def parity_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A cnn-tiny run (32 px, 2 epochs, SQLite MLflow store) on real images, and its test files."""
    from chestxray.data.catalog import Catalog, save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.training.config import TrainConfig
    from chestxray.training.train import train

    root = tmp_path_factory.mktemp("parity")
    rows = [{"image_id": p.name, "path": str(p), "patient_id": p.name, "split": split,
             LABEL: int(p.parent.name == "PNEUMONIA")} for split, paths in _images(shared_data).items() for p in paths]
    save_catalog(Catalog(pd.DataFrame(rows), (LABEL,), task="binary", source="parity test"), root / "catalog")
    prepare_dataset(root / "catalog", root / "prepared", size=SIZE, workers=0)
    train(TrainConfig(prepared=str(root / "prepared"), model="cnn-tiny", epochs=2, batch_size=8, lr=3e-3,
                      num_workers=0, out=str(root / "run"), mlflow_uri=f"sqlite:///{root / 'mlflow.db'}",
                      experiment="parity", progress=False, accelerator="cpu", patience=0))
    return root / "run", _images(shared_data)["test"]


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def _csv_probs(path: Path) -> np.ndarray:
    frame = pd.read_csv(path)
    assert (frame["status"] == "ok").all(), frame["reason"].tolist()
    return frame[f"p_{LABEL}"].to_numpy()


def _served(run: Path, files: list[Path], log: Path) -> np.ndarray:
    """POST /predict over real HTTP to `chestxray serve RUN` on a free loopback port."""
    port = free_port()
    out = []
    with running(["chestxray", "serve", str(run), "--port", str(port)], f"http://127.0.0.1:{port}/health", log):
        for path in files:
            reply = requests.post(f"http://127.0.0.1:{port}/predict", files={"file": (path.name, path.read_bytes())},
                                  timeout=60)
            assert reply.status_code == 200, reply.text
            out.append(reply.json()["findings"][0]["probability"])
    return np.array(out)


def _pyfunc(run: Path, files: list[Path], name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The bundle registered as an MLflow model after evaluate, loaded back: probabilities for the files' paths and
    for their pixels (decoded in full, as a caller holding arrays has them), and the model's metadata."""
    import mlflow

    from chestxray.data.imaging import load_gray
    from chestxray.deploy.mlflow_ui import register_bundle

    info = register_bundle(run, name)
    uri = json.loads((run / "run.json").read_text())["mlflow_tracking_uri"]
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(info.model_uri)
        by_path = model.predict(pd.DataFrame({"path": [str(p) for p in files]}))[f"p_{LABEL}"].to_numpy()
        arrays = np.empty(len(files), dtype=object)
        arrays[:] = [load_gray(p) for p in files]
        by_array = model.predict(arrays)[f"p_{LABEL}"].to_numpy()
        return by_path, by_array, model.metadata.metadata
    finally:
        mlflow.set_tracking_uri("")


@pytest.mark.parametrize("tta", ["hflip", "none", "tencrop"])
def test_every_scoring_path_agrees_with_evaluate(parity_run: tuple[Path, list[Path]], tta: str,
                                                 tmp_path: Path) -> None:
    from chestxray.data.imaging import DICOM_SUFFIXES
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.explain.explanations import explain_images, explain_split
    from chestxray.inference.predict import predict_split, torch_scorer
    from chestxray.models.bundle import load_bundle

    run, files = parity_run
    evaluate_run(run, tta=tta, n_boot=20, batch_size=4)  # thresholds chosen on val with this TTA, stored in the card
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["threshold_tta"] == tta and card["metrics"]["evaluation"]["tta"] == tta
    threshold = card["thresholds"][LABEL]
    evaluated = pd.read_csv(run / "eval" / "predictions.csv").set_index("image_id")
    reference = evaluated.loc[[p.name for p in files], f"p_{LABEL}"].to_numpy()

    _cli("predict", run, *files, "--out", tmp_path / "bundle.csv")  # engine auto: onnxruntime on this CPU
    _cli("predict", run, *files, "--engine", "torch", "--out", tmp_path / "torch.csv")
    _cli("export", run, "--onnx", tmp_path / "model.onnx")
    whole_levels = tta == "tencrop"  # the exported file takes uint8 pixels: interpolated views are refused, in words
    if whole_levels:
        refused = CliRunner().invoke(app, ["predict", str(tmp_path / "model.onnx"), *map(str, files)])
        assert refused.exit_code == 1 and "takes whole grey levels" in refused.output, refused.output
    else:
        _cli("predict", tmp_path / "model.onnx", *files, "--out", tmp_path / "onnx.csv")
    by_path, by_array, metadata = _pyfunc(run, files, f"parity-{tta}")
    assert metadata["threshold_tta"] == tta and metadata["thresholds"] == card["thresholds"]
    explained = explain_images(run / "bundle", [(p, LABEL) for p in files], out_dir=tmp_path / "explain")
    torch_split = predict_split(run / "bundle", split="test", tta=tta, engine="torch").set_index("image_id")
    got = {"predict (bundle, onnxruntime)": (_csv_probs(tmp_path / "bundle.csv"), ONNX_TOL),
           "predict (bundle, torch)": (_csv_probs(tmp_path / "torch.csv"), ONNX_TOL),
           "evaluate's scoring (torch)": (torch_split.loc[[p.name for p in files], f"p_{LABEL}"].to_numpy(), ONNX_TOL),
           "pyfunc (paths)": (by_path, TORCH_TOL),
           "serve (HTTP)": (_served(run, files, tmp_path / "serve.log"), TORCH_TOL),
           "explain (captions)": (np.array([r.probability for r in explained]), TORCH_TOL)}
    if not whole_levels:
        got["predict (onnx)"] = (_csv_probs(tmp_path / "onnx.csv"), ONNX_TOL)
    # arrays are pixels already decoded: the same as the file path for lossless formats; a JPEG decoded in full
    # differs from the draft decode prepare and predict use, so its array is held to the one path on its own pixels
    lossless = np.array([p.suffix.lower() in (".png", *DICOM_SUFFIXES) for p in files])
    got["pyfunc (arrays, PNG/DICOM)"] = (np.where(lossless, by_array, reference), TORCH_TOL)
    from chestxray.data.imaging import load_gray

    own = torch_scorer(load_bundle(run / "bundle")).score_arrays([load_gray(p) for p in files])[:, 0]
    assert np.abs(by_array - own).max() <= TORCH_TOL  # JPEG arrays too: the one path on the pixels given

    for path, (probs, tol) in got.items():
        assert probs.shape == reference.shape, path
        assert np.abs(probs - reference).max() <= tol, (path, probs - reference)
        assert ((probs >= threshold) == (reference >= threshold)).all(), (path, probs, reference, threshold)

    # the OOD check reads the same features from the ONNX graph as from PyTorch's hooks: same unusual inputs, and
    # in-distribution scores (ranks among the validation images) at most one rank apart
    by_ort, by_torch = pd.read_csv(tmp_path / "bundle.csv"), pd.read_csv(tmp_path / "torch.csv")
    n_val = json.loads((run / "bundle" / "ood.json").read_text())["n_val"]
    assert np.abs(by_ort["in_distribution"] - by_torch["in_distribution"]).max() <= 1 / (n_val + 1) + 1e-12
    assert (by_ort["unusual"] == by_torch["unusual"]).all()

    # explain's TP/FP/FN/TN selection scores the split as evaluate did (stored TTA) and decides at its threshold
    results, _ = explain_split(load_bundle(run / "bundle"), "test", n=len(files), out_root=tmp_path / "split",
                               outcomes=("TP", "FP", "FN", "TN"))
    truth = evaluated[LABEL]
    for r in results:
        p = evaluated.loc[r.image_id, f"p_{LABEL}"]
        assert abs(r.probability - p) <= TORCH_TOL, r.image_id
        positive = p >= threshold
        assert r.caption.outcome == ("T" if positive == bool(truth[r.image_id]) else "F") + ("P" if positive else "N")
