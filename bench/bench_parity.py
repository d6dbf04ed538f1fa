"""Scoring parity on a real run: every path that turns an image into a probability, against `evaluate`.

Takes a trained and evaluated RUN (thresholds and their TTA in the card, RUN/eval/predictions.csv) and scores the
evaluated split's image files again through predict (PyTorch), the ONNX export (onnxruntime), the MLflow pyfunc
(paths, and pixel arrays decoded in full), serve (POST /predict, in process) and explain (the caption
probability). For each path it prints the largest |p - p_evaluate| and how many decisions (p >= threshold) differ
from evaluate's, and writes bench/results/parity-<tta>-<host>.csv. Not a timing benchmark: a measurement of agreement.

Run (the Kaggle sample at 64 px, as in docs/scoring.md):
  chestxray catalog folder $CHESTXRAY_DATA/kaggle-chest-xray-pneumonia --out /tmp/p/catalog
  chestxray prepare /tmp/p/catalog --size 64 --out /tmp/p/prepared
  chestxray train /tmp/p/prepared --model cnn-small --epochs 8 --lr 2e-3 --augment minimal --no-mlflow --out /tmp/p/run
  chestxray evaluate /tmp/p/run --tta hflip
  nice -n 19 python bench/bench_parity.py /tmp/p/run
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def evaluated(run: Path) -> tuple[pd.DataFrame, dict, list[str]]:
    """RUN/eval/predictions.csv with each image's file path (from the catalog), the card and the labels."""
    from chestxray.data.catalog import load_catalog
    from chestxray.data.shards import read_manifest

    card = json.loads((run / "bundle" / "card.json").read_text())
    frame = pd.read_csv(run / "eval" / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    table = load_catalog(read_manifest(card["prepared"])["catalog"]).table.set_index("image_id")
    return frame.assign(path=table.loc[frame["image_id"], "path"].to_numpy()), card, list(card["labels"])


def score_predict(run: Path, paths: list[str]) -> np.ndarray:
    from chestxray.inference.predict import predict_images

    return predict_images(run, paths).filter(like="p_").to_numpy()


def score_onnx(run: Path, paths: list[str]) -> np.ndarray:
    from chestxray.deploy.onnx_export import export_onnx
    from chestxray.inference.stream import iter_predictions, open_scorer

    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(run / "bundle", Path(tmp) / "model.onnx")
        frames = list(iter_predictions(open_scorer(onnx), [Path(p) for p in paths]))
    return pd.concat(frames).filter(like="p_").to_numpy()


def _pyfunc(run: Path):
    try:
        from chestxray.deploy.pyfunc import BundlePyfunc
    except ImportError:  # before the scoring path: the wrapper lived in models
        from chestxray.models.pyfunc import BundlePyfunc
    model = BundlePyfunc()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(run / "bundle")}, model_config={}))
    return model


def score_pyfunc_paths(run: Path, paths: list[str]) -> np.ndarray:
    return _pyfunc(run).predict(None, pd.DataFrame({"path": paths})).to_numpy()


def score_pyfunc_arrays(run: Path, paths: list[str]) -> np.ndarray:
    from chestxray.data.imaging import load_gray

    arrays = np.empty(len(paths), dtype=object)
    arrays[:] = [load_gray(p) for p in paths]  # images of different sizes, decoded in full
    return _pyfunc(run).predict(None, arrays).to_numpy()


def score_serve(run: Path, paths: list[str]) -> np.ndarray:
    from fastapi.testclient import TestClient

    from chestxray.deploy.serve import create_app

    rows = []
    with TestClient(create_app(run), base_url="http://127.0.0.1") as client:
        for path in paths:
            reply = client.post("/predict", files={"file": (Path(path).name, Path(path).read_bytes())})
            reply.raise_for_status()
            rows.append([f["probability"] for f in reply.json()["findings"]])
    return np.array(rows)


def score_explain(run: Path, paths: list[str], labels: list[str]) -> np.ndarray:
    from chestxray.explain.explanations import explain_images

    out = np.full((len(paths), len(labels)), np.nan)
    with tempfile.TemporaryDirectory() as tmp:
        results = explain_images(run / "bundle", [(p, labels[0]) for p in paths], out_dir=tmp)
    for i, result in enumerate(results):
        out[i, 0] = result.probability
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="trained and evaluated run folder")
    parser.add_argument("--limit", type=int, default=0, help="only the first N evaluated images (0: all)")
    args = parser.parse_args()
    frame, card, labels = evaluated(args.run)
    if args.limit:
        frame = frame.head(args.limit)
    paths = frame["path"].tolist()
    reference = frame[[f"p_{x}" for x in labels]].to_numpy()
    thresholds = np.array([card["thresholds"][x] for x in labels])
    paths_by = {"predict (torch)": lambda: score_predict(args.run, paths),
                "predict (onnx)": lambda: score_onnx(args.run, paths),
                "pyfunc paths": lambda: score_pyfunc_paths(args.run, paths),
                "pyfunc arrays": lambda: score_pyfunc_arrays(args.run, paths),
                "serve": lambda: score_serve(args.run, paths),
                "explain caption": lambda: score_explain(args.run, paths, labels)}
    rows = []
    print(f"{len(paths)} images, card threshold_tta={card.get('threshold_tta', 'none')}, labels {labels}")
    for name, score in paths_by.items():
        got = score()
        known = ~np.isnan(got)
        diff = np.abs(got - reference)[known]
        flips = int(((got >= thresholds) != (reference >= thresholds))[known].sum())
        rows.append({"path": name, "images": len(paths), "tta": card.get("threshold_tta", "none"),
                     "max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean()), "flips": flips})
        print(f"{name:16s} max |dp| {diff.max():.2e}  mean {diff.mean():.2e}  flipped decisions {flips}")
    tta = card.get("threshold_tta", "none")
    out = HERE / "results" / f"parity-{tta}-{socket.gethostname().split('.')[0] or 'host'}.csv"
    out.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
