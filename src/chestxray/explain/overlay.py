"""Overlay pictures for people: the X-ray as the model saw it beside the same image with the heatmap, a colour bar
and a caption saying what the model decided (finding, probability, threshold, decision, TP/FP/FN/TN where the
truth is known).

Heat is drawn only where it is: each pixel's tint opacity grows with its heat and is zero below `floor`, so cold
regions keep the radiograph's own grey. An empty map (no signal) is drawn untinted and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from chestxray.explain.localize import Box, is_empty_map
from chestxray.files import atomic_path

CMAP = "jet"
LINE = 12  # pixels per caption line (Pillow's default bitmap font)
BAR = 14  # colour bar width in pixels


@dataclass(frozen=True)
class Caption:
    """What a reader needs under an overlay; threshold and truth are optional (unknown = not shown).

    `predicted`: a multi-class model's argmax class; it decides instead of a threshold (the finding is positive when
    it is the predicted class, whatever its probability: with K classes the argmax may be well under 0.5)."""

    finding: str
    probability: float
    method: str = ""
    threshold: float | None = None
    truth: int | None = None
    image_id: str = ""
    split: str = ""
    predicted: str | None = None

    @property
    def positive(self) -> bool | None:
        """The model's decision for this finding: argmax class (multi-class), p >= threshold, or None (unknown)."""
        if self.predicted is not None:
            return self.predicted == self.finding
        return None if self.threshold is None else self.probability >= self.threshold

    @property
    def outcome(self) -> str:
        """TP, FP, FN or TN when the decision and the truth are known, else ''."""
        if self.positive is None or self.truth is None:
            return ""
        return ("T" if self.positive == bool(self.truth) else "F") + ("P" if self.positive else "N")

    def lines(self) -> list[str]:
        """Caption lines: the image (and split), then finding, probability, decision rule, outcome, method."""
        head = " | ".join(x for x in (self.image_id, f"split: {self.split}" if self.split else "") if x)
        text = f"{self.finding}: p={self.probability:.2f}"
        decision = "positive" if self.positive else "negative"
        if self.predicted is not None:
            text += f", argmax class {self.predicted} -> {decision}"
        elif self.threshold is not None:
            text += f", threshold {self.threshold:.2f} -> {decision}"
        if self.outcome:
            text += f" ({self.outcome}, truth {'positive' if self.truth else 'negative'})"
        if self.method:
            text += f" [{self.method}]"
        return [line for line in (head, text) if line]


def tint(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6, floor: float = 0.2) -> np.ndarray:
    """RGB float (H, W, 3) in [0, 1]: the gray image with heat blended in only where heat > floor, more where hotter."""
    from matplotlib import colormaps

    base = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    if is_empty_map(heatmap):
        return base
    heat = np.clip(heatmap, 0, 1)
    opacity = alpha * np.clip((heat - floor) / (1 - floor), 0, 1)[..., None]
    colour = colormaps[CMAP](heat)[..., :3]
    return (1 - opacity) * base + opacity * colour


def _colour_bar(height: int) -> Image.Image:
    """A vertical CMAP gradient (1 at the top), BAR px wide, with '1' and '0' beside it."""
    from matplotlib import colormaps

    ramp = colormaps[CMAP](np.linspace(1, 0, height))[:, :3]
    bar = np.repeat((ramp * 255).round().astype(np.uint8)[:, None, :], BAR, axis=1)
    strip = Image.new("RGB", (BAR + 22, height), (0, 0, 0))
    strip.paste(Image.fromarray(bar, "RGB"), (0, 0))
    draw = ImageDraw.Draw(strip)
    draw.text((BAR + 3, 0), "1", fill=(255, 255, 255))
    draw.text((BAR + 3, height - LINE), "0", fill=(255, 255, 255))
    return strip


def render_overlay(
    gray: np.ndarray, heatmap: np.ndarray, caption: Caption | str, boxes: Sequence[Box] = (), alpha: float = 0.6,
    display: int = 256, floor: float = 0.2,
) -> Image.Image:
    """RGB picture: caption lines on top; below, the uint8 (H, W) X-ray, the same with the [0, 1] heatmap (tinted only
    where hot, expert boxes in white) and a colour bar. Both panels are scaled to at least `display` px."""
    if gray.shape != heatmap.shape:
        raise ValueError(f"image {gray.shape} and heatmap {heatmap.shape} must have the same shape")
    scale = max(1.0, display / max(gray.shape))
    side = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
    original = Image.fromarray(gray, "L").convert("RGB").resize(side, Image.Resampling.BILINEAR)
    heated = Image.fromarray((tint(gray, heatmap, alpha, floor) * 255).round().astype(np.uint8), "RGB")
    heated = heated.resize(side, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(heated)
    for b in boxes:
        draw.rectangle([b.x * scale, b.y * scale, (b.x + b.w) * scale, (b.y + b.h) * scale], outline=(255, 255, 255), width=2)
    lines = caption.lines() if isinstance(caption, Caption) else [caption]
    if is_empty_map(heatmap):
        lines.append("empty map: no signal for this finding (not scored)")
    top = LINE * len(lines) + 6
    gap = 4
    bar = _colour_bar(side[1])
    canvas = Image.new("RGB", (2 * side[0] + gap + 4 + bar.width, side[1] + top), (0, 0, 0))
    canvas.paste(original, (0, top))
    canvas.paste(heated, (side[0] + gap, top))
    canvas.paste(bar, (2 * side[0] + gap + 4, top))
    text = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        text.text((4, 3 + i * LINE), line, fill=(255, 255, 255))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PIL image as PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
