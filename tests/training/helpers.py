"""Shared by the training tests: batches in the DataModule's layout and a quiet CPU Trainer."""

from __future__ import annotations

import lightning as L
import torch


def batches(n: int, labels: torch.Tensor, size: int = 16, batch: int = 4, seed: int = 0) -> list[dict]:
    """Batches in the DataModule's dict layout (image, labels, image_id, patient_id)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, size, size, generator=g)
    return [{"image": images[i:i + batch], "labels": labels[i:i + batch].float(),
             "image_id": [f"im{j}" for j in range(i, min(n, i + batch))],
             "patient_id": [f"p{j}" for j in range(i, min(n, i + batch))]} for i in range(0, n, batch)]


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)
