"""`chestxray weights fetch|list`: fill and inspect the pretrained-weights cache (for clusters without internet)."""

from __future__ import annotations

from typing import Optional

import typer

from chestxray.cli import app
from chestxray.cli.common import console, friendly

weights_app = typer.Typer(help="Pretrained weights: fetch them into the local cache, list what is cached.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch", help="Download model NAME's ImageNet weights into the cache ($TORCH_HOME/hub/checkpoints "
                     "for torchvision files, the Hugging Face cache for timm/<name>), checked against the published "
                     "hash. Run it once on a login node; compute nodes then train with --offline.\n\n"
                     "Example: chestxray weights fetch densenet121\n\n"
                     "Example (internal mirror of download.pytorch.org/models): chestxray weights fetch resnet18 "
                     "--mirror https://mirror.example.org/torch-models")
@friendly
def fetch(
    name: str = typer.Argument(..., help="Registered model (see 'chestxray models') or timm/<name>."),
    mirror: Optional[str] = typer.Option(None, "--mirror", envvar="CHESTXRAY_WEIGHTS_MIRROR",
                                         help="Base URL serving the published file names (replaces the host)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a download progress bar."),
) -> None:
    from chestxray.cli import checks

    checks.model_name(name, "NAME")
    from chestxray.models.weights import fetch_weights

    console.print(f"{name}: ImageNet weights ready ({fetch_weights(name, mirror=mirror, progress=progress)})",
                  highlight=False, soft_wrap=True)


@weights_app.command("list", help="List the registered models with ImageNet weights, whether each is cached, and "
                     "where ($TORCH_HOME decides the folder).\n\nExample: chestxray weights list")
@friendly
def list_weights() -> None:
    import torch

    from chestxray.models.weights import weights_table

    for row in weights_table():
        console.print(f"{row['model']:20s} {row['cached']:8s} {row['path'] or row['source']}", highlight=False,
                      soft_wrap=True)
    console.print(f"cache folder: {torch.hub.get_dir()}/checkpoints (set TORCH_HOME to move it); timm/<name> weights "
                  "live in the Hugging Face cache (HF_HOME)", highlight=False, soft_wrap=True)
