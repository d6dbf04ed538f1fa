"""`chestxray audit`: subgroups, shortcuts and explanation coverage of an evaluated run (thin over workflows.audit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, fmt, friendly


def _interval(row: Any, key: str) -> str:
    """'0.412 (.31–.52)' or the value alone when there is no interval."""
    text = fmt(row[key])
    if row.get(f"{key}_low") == row.get(f"{key}_low") and row.get(f"{key}_low") is not None:
        text += f" ({row[f'{key}_low']:.2f}–{row[f'{key}_high']:.2f})".replace("0.", ".")
    return text


def _table(result: Any) -> Any:
    """The headline rows (under-diagnosis per subgroup, or the one label's FNR) as a console table."""
    from rich import box
    from rich.table import Table

    from chestxray.evaluation.audit_plots import headline_task

    task = headline_task(result.table)
    rate = "under-diag." if task == "any finding" else "FNR"
    table = Table(title=f"{result.split} split — {task} by subgroup (thresholds as stored)", box=box.SIMPLE_HEAD,
                  header_style="bold", pad_edge=False, padding=(0, 1))
    for col in ("attribute", "group", "img", "pat", "AUROC (95% CI)", f"{rate} (95% CI)", "diff", "flag / note"):
        table.add_column(col, justify="left" if col in ("attribute", "group", "flag / note") else "right")
    for _, r in result.table[result.table["finding"] == task].iterrows():
        diff = "" if r["fnr_diff"] != r["fnr_diff"] else f"{r['fnr_diff']:+.2f}"
        note = "too few patients" if str(r["note"]).startswith("too few") else r["note"]
        table.add_row(str(r["attribute"]), str(r["subgroup"]), str(r["images"]), str(r["patients"]),
                      _interval(r, "auroc"), _interval(r, "fnr"), diff, r["flag"] or note,
                      style="bold red" if r["flag"] else None)
    return table


@app.command(help="Audit an evaluated run the way a journal reviewer would: per subgroup (sex, age bands, view, "
             "site, manufacturer, any catalog column) AUROC with patient-bootstrap intervals, sensitivity, specificity, "
             "FNR and the under-diagnosis rate at the stored thresholds, gaps tested at the patient level with Holm's "
             "correction, a case-mix/prevalence-controlled comparison; shortcut checks (AUROC within acquisition "
             "strata, counterfactual re-render, feature probe) and what the explanations cover. Writes subgroups.csv, "
             "audit.json, figures and audit.html into --out (default RUN/audit); 'chestxray report RUN' then shows it."
             "\n\nExample: chestxray audit runs/densenet121 --by sex,age,view")
@friendly
def audit(
    run: Path = typer.Argument(..., help="Run folder, evaluated ('chestxray evaluate RUN')."),
    split: str = typer.Option("test", "--split", help="Split to audit (the one evaluate scored, or val)."),
    by: Optional[str] = typer.Option(None, "--by", help="Attributes, comma-separated: sex, age, view, location, "
                                     "site, manufacturer or any catalog column (default: those the catalog has)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN/audit)."),
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog with the attributes (default: the one "
                                           "the prepared data was made from)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of the image sample of the shortcut checks."),
    alpha: float = typer.Option(0.05, "--alpha", help="Family-wise error rate of the flags (Holm)."),
    shortcuts: bool = typer.Option(True, "--shortcuts/--no-shortcuts", help="Also run the shortcut checks and "
                                   "count empty Grad-CAM maps per outcome (both score images with the model)."),
    max_images: int = typer.Option(400, "--max-images", help="Images the shortcut checks score at most."),
    coverage_images: int = typer.Option(48, "--coverage-images", help="Images whose Grad-CAM maps (every label) are "
                                        "counted for the coverage of the explanations."),
) -> None:
    from chestxray.cli import checks

    checks.run_folder(run)
    checks.at_least("--n-boot", n_boot, 50)
    checks.at_least("--alpha", alpha, 1e-6, 0.5)
    checks.at_least("--max-images", max_images, 1)
    checks.at_least("--coverage-images", coverage_images, 0)
    from chestxray.workflows.audit import run_audit

    with console.status(f"auditing {run} ({split}) ..."):
        outcome = run_audit(run, split, by.split(",") if by else None, out, catalog, n_boot, seed, alpha, shortcuts,
                            max_images, coverage_images)
    result = outcome.subgroups
    if len(result.table):
        console.print(_table(result))
    for line in result.sentences():
        console.print(f"- {line}", highlight=False, soft_wrap=True)
    for line in outcome.shortcut_findings:
        console.print(f"- shortcut: {line}", highlight=False, soft_wrap=True)
    if outcome.coverage_text:
        console.print(f"- explanations: {outcome.coverage_text}", highlight=False, soft_wrap=True)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"audit {outcome.out_dir}: {len(result.table)} subgroup rows, "
                  f"{result.settings['comparisons']} comparisons tested; page {outcome.page}", highlight=False,
                  soft_wrap=True)
