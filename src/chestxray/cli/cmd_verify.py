"""`chestxray verify`: check a PREPARED folder's shards against manifest.json (sizes; checksums on request)."""

from __future__ import annotations

import typer

from chestxray.cli import app
from chestxray.cli.common import console, friendly


@app.command(help="Check that every shard of a PREPARED folder is present, whole and unaltered.\n\nSizes are "
             "checked by default (instant); --checksums also reads every shard and compares its sha256 with "
             "manifest.json. A damaged shard is named with the way out, exit code 1.\n\n"
             "Example: chestxray verify runs/prepared --checksums")
@friendly
def verify(
    prepared: str = typer.Argument(..., help="PREPARED folder (from 'chestxray prepare')."),
    checksums: bool = typer.Option(False, "--checksums", help="Also compare every shard's sha256 (reads all bytes)."),
) -> None:
    from chestxray.cli import checks

    checks.prepared_folder(prepared)
    from chestxray.data.verify import verify_prepared

    console.print(verify_prepared(prepared, checksums=checksums).summary(), highlight=False, soft_wrap=True)
