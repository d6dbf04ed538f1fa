"""A small merged dataset of SYNTHETIC images from three 'sources' that annotate different findings, so missing labels,
per-source sampling and per-source metrics can be tested end to end in seconds.

- full:  all four synthetic findings (Cardiomegaly, Effusion, Nodule, Pneumothorax), NIH layout;
- eff:   a CSV source annotating Effusion and Nodule;
- nod:   a CSV source annotating Nodule and Pneumothorax.
Nodule is annotated by every source (the cross-dataset matrix's shared finding). The images of each source are drawn by chestxray.data.synth (findings drawn where the labels say), each source
with its own seed and a brightness offset, so a model can also tell the sources apart (a source shortcut).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import Catalog
from chestxray.data.merge import MergeInput, merge_catalogs


def _source(root: Path, name: str, n: int, seed: int, labels: tuple[str, ...], offset: int) -> Catalog:
    from PIL import Image

    from chestxray.data.synth import FINDINGS, draw_image

    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        present = {f for f in FINDINGS if rng.random() < 0.3}
        image, _ = draw_image(present, 32, rng)
        image = np.clip(image.astype(int) + offset, 0, 255).astype(np.uint8)
        path = folder / f"{name}{i:04d}.png"
        Image.fromarray(image).save(path)
        rows.append({"image_id": path.name, "path": str(path), "patient_id": str(i // 2), "split": "",
                     **{f: int(f in present) for f in labels}, "sex": "MF"[i % 2], "age": 20 + i % 60})
    table = pd.DataFrame(rows)
    return Catalog(table, labels, task="binary" if len(labels) == 1 else "multilabel", source="csv")


def merged_catalog(root: Path, n: int = 120, seed: int = 0) -> Catalog:
    """The three synthetic sources merged (default label map, ratios 0.6/0.2/0.2, split within each source)."""
    inputs = [MergeInput("full", _source(root, "full", n, seed, ("Cardiomegaly", "Effusion", "Nodule",
                                                                  "Pneumothorax"), 0)),
              MergeInput("eff", _source(root, "eff", n, seed + 1, ("Effusion", "Nodule"), 30)),
              MergeInput("nod", _source(root, "nod", n, seed + 2, ("Nodule", "Pneumothorax"), -20))]
    return merge_catalogs(inputs, ratios=(0.6, 0.2, 0.2), seed=seed)


def merged_prepared(root: Path, n: int = 120) -> Path:
    """merged_catalog prepared at 32 px into root/prepared (workers 0)."""
    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset

    catalog = merged_catalog(root / "images", n)
    save_catalog(catalog, root / "catalog")
    prepare_dataset(root / "catalog", root / "prepared", size=32, workers=0)
    return root / "prepared"
