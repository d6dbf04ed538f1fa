"""Commands for comparing methods: `compare-runs` (two evaluated runs, paired tests)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from chestxray.cli import app
from chestxray.cli.common import console, fmt, friendly


@app.command("compare-runs", help="Paired comparison of two evaluated runs on the same split: AUROC difference per "
             "finding with DeLong's test (Holm-corrected over findings) and a paired patient-bootstrap interval."
             "\n\nExample: chestxray compare-runs runs/finetune runs/frozen --out finetune-vs-frozen.csv")
@friendly
def compare_runs_cmd(
    run_a: Path = typer.Argument(..., help="First run folder (evaluated: RUN/eval/predictions.csv)."),
    run_b: Path = typer.Argument(..., help="Second run folder, evaluated on the same split."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Paired bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV of the per-finding table (and a .json beside it)."),
) -> None:
    from chestxray.evaluation.compare_runs import compare_runs, format_p
    from chestxray.files import write_csv, write_json

    result = compare_runs(run_a, run_b, n_boot=n_boot, seed=seed)
    table = Table(title=f"{result.name_a} vs {result.name_b} on {result.split} ({result.n_images} images, "
                        f"{result.n_patients} patients); difference = a - b", header_style="bold")
    for col in ("finding", "AUROC a", "AUROC b", "diff", "95% CI", "p (DeLong)", "p (Holm)"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    for r in result.table.to_dict("records"):
        ci = f"[{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] == r["low"] and r["low"] is not None else "n/a"
        p = format_p(r["p"]) if r["p"] == r["p"] and r["p"] is not None else "—"
        ph = format_p(r["p_holm"]) if r["p_holm"] == r["p_holm"] and r["p_holm"] is not None else "—"
        diff = f"{r['diff']:+.3f}" if r["diff"] == r["diff"] and r["diff"] is not None else "n/a"
        table.add_row(r["finding"], fmt(r["auroc_a"]), fmt(r["auroc_b"]), diff, ci, p, ph)
    console.print(table)
    console.print(result.headline(), highlight=False, soft_wrap=True)
    console.print(result.method, highlight=False, soft_wrap=True, style="dim")
    if out is not None:
        write_csv(out, result.table)
        write_json(Path(out).with_suffix(".json"), result.to_dict())
        console.print(f"wrote {out}", highlight=False)
