"""Which `--resize` should be the default: the shape shortcut on the Kaggle pneumonia sample under crop, pad and stretch.

Kaggle's pneumonia images are wider than its normal ones (aspect ratio alone: AUROC about 0.88). For each geometry
the same catalog and split (seed 0, as the demo) is prepared at 64 px, the demo's scratch recipe is trained (cnn-small,
8 epochs, lr 2e-3, minimal augmentation, seed 0), evaluated on the test split, and audited for shortcuts
(chestxray.evaluation.shortcut_audit on up to 400 test images):
- test AUROC with its patient-bootstrap interval;
- AUROC within aspect-ratio strata (pairs compared only inside a stratum, so the shape cannot help) beside it;
- the decisions that change when the same test images are re-rendered with each other geometry;
- a linear probe on the penultimate features (and on the input pixels) for "wider than the median".
The data-side check (no model: how well the 64 px input tells "wider than the class median", per class and
geometry, and what crop discards) is `chestxray explore CATALOG --geometry 64`.
Writes bench/results/resize-<host>.csv and prints it. Not a speed benchmark: figures depend on the data, not the CPU
(seeded; training precision as the demo's, `--precision auto`: bf16-mixed on a CPU with native bf16, else fp32, recorded
in the `precision` column; another precision, a GPU or another torch build may change the last digits).

Run: .venv/bin/python bench/bench_resize.py [--modes crop,pad,stretch] [--size 64] [--epochs 8] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from pathlib import Path

import pandas as pd

from chestxray.files import write_csv

RESULTS = Path(__file__).resolve().parent / "results"


def one_geometry(mode: str, catalog_dir: Path, work: Path, size: int, epochs: int, precision: str) -> dict:
    """Prepare, train, evaluate and audit one geometry; the row of the results table."""
    from chestxray.data.prepare import prepare_dataset
    from chestxray.evaluation.audit import load_audit_frame
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.evaluation.shortcut_audit import audit_shortcuts
    from chestxray.training.config import TrainConfig
    from chestxray.training.train import train

    prepared = prepare_dataset(catalog_dir, work / f"prepared-{mode}", size=size, resize=mode, workers=2)
    config = TrainConfig(prepared=str(prepared.out_dir), model="cnn-small", epochs=epochs, batch_size=32, lr=2e-3,
                         augment="minimal", seed=0, out=str(work / f"run-{mode}"), mlflow=False, progress=False,
                         num_workers=0, precision=precision)
    run = train(config).run_dir
    result = evaluate_run(run, split="test", n_boot=1000, seed=0)
    label = result.labels[0]
    frame, metrics = load_audit_frame(run, "test")
    audit = audit_shortcuts(run / "bundle", frame, result.labels, metrics["thresholds"], metrics.get("task", "binary"),
                            max_images=400, n_boot=500, seed=0)
    row = {"geometry": mode, "size": size, "precision": json.loads((run / "run.json").read_text())["precision"],
           "test_images": result.summary.n_images}
    auc = result.summary.row(label).auroc
    row.update(auroc=auc.value, auroc_low=auc.low, auroc_high=auc.high)
    strata = audit.strata.set_index("feature") if len(audit.strata) else pd.DataFrame()
    if "aspect_ratio" in strata.index:
        s = strata.loc["aspect_ratio"]
        row.update(aspect_alone=s["feature_auroc"], auroc_within_aspect=s["stratified_auroc"],
                   within_low=s["stratified_low"], within_high=s["stratified_high"], aspect_strata=int(s["strata"]))
    for _, c in audit.counterfactual.iterrows():
        row[f"changed_{c['geometry'].split(' -> ')[1]}"] = c["changed_share"]
    probe = audit.probe.set_index("target") if len(audit.probe) else pd.DataFrame()
    if "wider than the median" in probe.index:
        row["probe_wider_features"] = probe.loc["wider than the median", "probe_auroc_features"]
        row["probe_wider_pixels"] = probe.loc["wider than the median", "probe_auroc_pixels"]
    row["scoring_parity"] = audit.parity
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="crop,pad,stretch")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="training precision, as train's --precision")
    parser.add_argument("--data", default=None, help="kaggle-chest-xray-pneumonia folder (default: the bundled sample)")
    args = parser.parse_args()
    from chestxray.data.catalog import save_catalog
    from chestxray.data.samples import KAGGLE, find_sample_data
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    data = Path(args.data) if args.data else find_sample_data() / KAGGLE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog_dir = save_catalog(assign_splits(read_folder(data), seed=0), work / "catalog")
        for mode in args.modes.split(","):
            rows.append(one_geometry(mode, catalog_dir, work, args.size, args.epochs, args.precision))
            print(pd.DataFrame(rows).to_string(index=False), flush=True)
    out = write_csv(RESULTS / f"resize-{socket.gethostname()}.csv", pd.DataFrame(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
