"""The evaluate table stays legible at 80 columns: names whole, nothing wrapped, notes below the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from chestxray.cli.cmd_evaluate import _metrics_table
from chestxray.data.labels import NIH14
from chestxray.evaluation.evaluate import evaluate_predictions


def _predictions(n: int, rng: np.random.Generator) -> pd.DataFrame:
    labels = list(NIH14)
    y = (rng.random((n, len(labels))) < 0.2).astype(np.uint8)
    y[:, labels.index("Hernia")] = 0  # n/a: its note goes below the table
    s = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * y - 1.5)))
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k}" for k in range(n)]})
    frame[labels] = y
    frame[[f"p_{x}" for x in labels]] = s
    return frame


def test_evaluate_table_fits_80_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    result = evaluate_predictions(_predictions(120, rng), _predictions(160, rng), NIH14, tmp_path, n_boot=20)
    table, notes = _metrics_table(result)
    console = Console(width=80, record=True, color_system=None)
    console.print(table)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0].rstrip("*"): line for line in lines if line.strip() and line.split()[0].rstrip("*") in
            [*NIH14, "macro"]}
    assert set(rows) == {*NIH14, "macro"}  # every name whole on its own row (no "Fibrosi s")
    assert "–" in rows["Effusion"] and rows["Hernia"].strip().startswith("Hernia*")
    assert notes and notes[0].startswith("* Hernia:")
