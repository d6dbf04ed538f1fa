"""The COVID-19 image collection (Cohen et al.) as a "new site" for a Kaggle NORMAL/PNEUMONIA model.

Writes OUT/site.csv — one row per frontal image (PA, AP, AP Supine) whose finding is a pneumonia (COVID-19,
bacterial, viral, fungal, lipoid) or "No Finding", with a 0/1 PNEUMONIA column — and OUT/lateral.csv (the lateral
views, any finding). ARDS alone is not a pneumonia label and is left out. Then
`chestxray catalog csv OUT/site.csv --path-col path --patient-col patientid --label-cols PNEUMONIA` makes the catalog.

Run: python bench/covid_site.py --out runs/covid-site [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

PNEUMONIA = {"COVID-19", "COVID-19, ARDS", "Klebsiella", "Legionella", "Pneumocystis", "Pneumonia", "Streptococcus",
             "Varicella", "Lipoid"}
FRONTAL = {"PA", "AP", "AP Supine"}


def site_tables(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frontal pneumonia / No Finding rows with a PNEUMONIA column, lateral rows) of the collection's metadata."""
    root = data / "covid-chestxray-dataset"
    meta = pd.read_csv(root / "metadata.csv", dtype={"patientid": str})
    meta = meta.assign(path=[str(root / p) for p in meta["image_file"]])
    frontal = meta[meta["view"].isin(FRONTAL) & (meta["finding"].isin(PNEUMONIA) | (meta["finding"] == "No Finding"))]
    frontal = frontal.assign(PNEUMONIA=frontal["finding"].isin(PNEUMONIA).astype(int))
    cols = ["path", "patientid", "PNEUMONIA", "finding", "view", "age", "sex"]
    return frontal[cols].reset_index(drop=True), meta[meta["view"] == "L"][["path", "patientid", "finding", "view"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CHESTXRAY_DATA", "../shared/data")))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    site, lateral = site_tables(args.data)
    site.to_csv(args.out / "site.csv", index=False)
    lateral.to_csv(args.out / "lateral.csv", index=False)
    print(f"site: {len(site)} frontal images of {site['patientid'].nunique()} patients, "
          f"{int(site['PNEUMONIA'].sum())} pneumonia / {int((site['PNEUMONIA'] == 0).sum())} No Finding; "
          f"lateral: {len(lateral)} images -> {args.out}")


if __name__ == "__main__":
    main()
