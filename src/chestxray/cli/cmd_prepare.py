"""`chestxray prepare`: decode, resize and shard a catalog once (area B)."""

from __future__ import annotations

from pathlib import Path

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, friendly


@app.command(help="Decode every catalog image once (8-bit gray, resized to a square) into tar shards + manifest.json."
             "\n\nRe-running skips finished work; changed inputs or settings rebuild. Unusable files are listed in "
             "quarantine.csv.\n\nExample: chestxray prepare runs/catalog --size 256 --out runs/prepared")
@friendly
def prepare(
    catalog: Path = typer.Argument(..., help="Catalog folder (from 'chestxray catalog')."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder PREPARED."),
    size: int = typer.Option(256, "--size", help="Square image size in pixels."),
    resize: str = typer.Option("stretch", "--resize",
                               help="stretch (default): the whole image, each side scaled to --size; crop: the centre "
                                    "square (loses the sides of wide images, up to 69%% of the width on the Kaggle "
                                    "sample); pad: the whole image on black bars, whose size is the aspect ratio. "
                                    "None hides the image's shape from a model: see docs/audit.md."),
    workers: int = typer.Option(0, "--workers", "-j", help="Decoding processes (0 = all CPU cores)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Images per shard file."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels",
                                   help="Quarantine images with more pixels than this (read from the file header "
                                        "before decoding: a decompression-bomb guard)."),
) -> None:
    from chestxray.cli import checks

    checks.one_of("--resize", resize, checks.RESIZE_MODES)
    checks.at_least("--size", size, 1)
    checks.at_least("--shard-size", shard_size, 1)
    checks.at_least("--workers", workers, 0)
    checks.catalog_folder(catalog, out)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from chestxray.data.prepare import prepare_dataset

    with Progress(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("prepare", total=None)

        def advance(n: int, total: int) -> None:
            bar.update(task, advance=n, total=total)

        result = prepare_dataset(catalog, out, size=size, resize=resize, workers=workers or None,
                                 shard_size=shard_size, progress=advance, max_pixels=max_pixels)
    if result.quarantined:
        err_console.print(f"[yellow]warning:[/] {result.quarantined} image(s) could not be used; reasons in "
                          f"{out / 'quarantine.csv'}", highlight=False)
    console.print(result.summary(), highlight=False, soft_wrap=True)
