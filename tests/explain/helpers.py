"""Shared by the explain tests: a tiny CNN and a Gaussian blob on a SIZE × SIZE grid."""

from __future__ import annotations

import numpy as np
import torch

SIZE = 32


class BrightNet(torch.nn.Sequential):
    """Tiny CNN: conv -> ReLU -> conv -> ReLU -> global pool -> linear (2 logits)."""

    def __init__(self) -> None:
        super().__init__(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2),
        )


def blob(center: tuple[int, int], size: int = SIZE, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * sigma**2)).astype(np.float32)
