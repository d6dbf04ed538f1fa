"""A new site, end to end: a Kaggle-trained pneumonia model meets the COVID-19 collection (adults, other hospitals).

Runs the documented command sequence (docs/new-site.md) as `chestxray` processes and prints every figure the page
quotes: the home test split vs the new site (the drop), the recalibration on a labelled sample of the site checked on
its held-out images, the conformal bound on missed pneumonias, the label-free prevalence estimate, and how the
in-distribution score treats the site's frontal and lateral views, inverted radiographs and non-CXR images. Writes
bench/results/newsite-<host>.csv.

Run: CHESTXRAY_DATA=../shared/data .venv/bin/python bench/bench_newsite.py --out runs/newsite [--labelled 100]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from covid_site import site_tables  # noqa: E402

from chestxray.data.samples import non_cxr_images  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def chestxray(*args: str) -> None:
    """One `chestxray` command, echoed; stops the script when it fails."""
    print("$ chestxray " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "chestxray", *args], check=True)


def ood_rows(run: Path, groups: dict[str, list[Path]]) -> list[dict]:
    """Share marked unusual per group and the AUROC against the home test images (the score is the same one
    predict writes)."""
    from sklearn.metrics import roc_auc_score

    from chestxray.inference.predict import predict_images

    scores = {k: predict_images(run, v)["in_distribution"].to_numpy() for k, v in groups.items()}
    rows = []
    for name, s in scores.items():
        home = scores["home test (Kaggle)"]
        y = np.r_[np.zeros(len(home)), np.ones(len(s))]
        auc = roc_auc_score(y, -np.r_[home, s]) if name != "home test (Kaggle)" else None
        rows.append({"what": "ood", "group": name, "images": len(s), "unusual_share": float(np.mean(s <= 0.01)),
                     "auroc_vs_home": auc})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CHESTXRAY_DATA", "../shared/data")))
    ap.add_argument("--labelled", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    out, data = args.out, args.data
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    run = out / "run"
    if not (run / "eval" / "metrics.json").is_file():
        chestxray("catalog", "folder", str(data / "kaggle-chest-xray-pneumonia"), "--out", str(out / "kaggle-cat"))
        chestxray("prepare", str(out / "kaggle-cat"), "--size", "64", "--out", str(out / "kaggle64"))
        chestxray("train", str(out / "kaggle64"), "--model", "cnn-small", "--epochs", str(args.epochs),
                  "--batch-size", "32", "--lr", "2e-3", "--no-mlflow", "--out", str(run))
        chestxray("evaluate", str(run))
    site, lateral = site_tables(data)
    site.to_csv(out / "covid-site.csv", index=False)
    chestxray("catalog", "csv", str(out / "covid-site.csv"), "--path-col", "path", "--patient-col", "patientid",
              "--label-cols", "PNEUMONIA", "--out", str(out / "covid-cat"))
    chestxray("calibrate", str(run), "--data", str(out / "covid-cat"), "--labelled", str(args.labelled),
              "--out", str(run / "sites" / "covid"))
    chestxray("calibrate", str(run), "--data", str(out / "covid-cat"), "--labelled", "0",
              "--out", str(run / "sites" / "covid-nolabels"))

    home = json.loads((run / "eval" / "metrics.json").read_text())
    labelled = json.loads((run / "sites" / "covid" / "report.json").read_text())
    unlabelled = json.loads((run / "sites" / "covid-nolabels" / "report.json").read_text())
    h = home["rows"][0]
    rows = [{"what": "home test (Kaggle)", "images": h["n"], "positives": h["positives"], "auroc": h["auroc"]["value"],
             "auroc_low": h["auroc"]["low"], "auroc_high": h["auroc"]["high"], "ece": h.get("ece"),
             "threshold": h.get("threshold"), "sensitivity": (h.get("counts") or {}).get("sensitivity"),
             "specificity": (h.get("counts") or {}).get("specificity")}]
    held = labelled["held_out"][0]
    for tag in ("before", "after"):
        r = held[tag]
        rows.append({"what": f"site held-out, {tag}", "images": held["images"], "positives": held["positives"],
                     "auroc": r["auroc"]["value"], "auroc_low": r["auroc"]["low"], "auroc_high": r["auroc"]["high"],
                     "ece": r["ece"]["value"], "brier": r["brier"]["value"], "threshold": r["threshold"],
                     "sensitivity": r.get("sensitivity"), "specificity": r.get("specificity"),
                     "fn": r.get("fn"), "fp": r.get("fp")})
    conf = labelled["conformal_recall_held_out"]
    rows.append({"what": "conformal held-out", "threshold": labelled["conformal"]["recall"]["threshold"],
                 "miss_rate": conf["miss_rate"], "images": conf["n_with_finding"],
                 "no_finding_empty_set_share": conf["no_finding_empty_set_share"]})
    prev = unlabelled["prevalence"]
    rows.append({"what": "EM prevalence", "estimate": prev["estimate"][0], "low": prev["low"][0],
                 "high": prev["high"][0], "true": unlabelled["site_label_columns_prevalence"][0],
                 "source": prev["source"][0], "mean_probability": prev["mean_probability"][0]})
    kaggle = pd.read_csv(out / "kaggle-cat" / "catalog.csv", dtype=str)
    test = [Path(p) for p in kaggle.loc[kaggle["split"] == "test", "path"]]
    inverted = out / "inverted"
    inverted.mkdir(exist_ok=True)
    for p in test:
        Image.fromarray(255 - np.asarray(Image.open(p).convert("L"))).save(inverted / f"{p.stem}.png")
    (out / "non-cxr").mkdir(exist_ok=True)
    rows += ood_rows(run, {"home test (Kaggle)": test, "COVID site frontal": [Path(p) for p in site["path"]],
                           "COVID lateral": [Path(p) for p in lateral["path"]],
                           "inverted home test": sorted(inverted.iterdir()),
                           "non-CXR (matplotlib, scikit-image)": non_cxr_images(out / "non-cxr")})
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / f"newsite-{socket.gethostname()}.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
    print(f"{time.time() - start:.0f} s wall; results in {RESULTS / f'newsite-{socket.gethostname()}.csv'}")


if __name__ == "__main__":
    main()
