"""Pretrained stems between RGB and grey: folding a 3-channel first layer into 1 channel (and spreading it back) so
the folded model computes what the RGB model computes on the grey image replicated into three channels.

The RGB model sees x_c = (g - m_c) / s_c per channel (ImageNet: m = 0.485, 0.456, 0.406, s = 0.229, 0.224, 0.225);
the 1-channel model sees x = (g - m) / s with the averages m, s (chestxray.data.augment.input_stats). Substituting
g = s·x + m:

    Σ_c W_c * x_c = (Σ_c W_c · s / s_c) * x + Σ_c Σ_k W_c[k] · (m - m_c) / s_c

so the grey kernel is each RGB kernel scaled by s / s_c and summed, and the second term is a constant per output
channel. Summing the kernels unscaled (what timm's adapt_input_conv and this package did before) is exact only when
the three channels share their statistics; with ImageNet's it left a first-layer error of ~0.15 on real X-rays.

The constant goes into the stem's bias when it has one; otherwise into the running mean of the BatchNorm that reads
the stem's output (subtracting it there is the same function in eval mode, and in train mode BatchNorm removes any
constant anyway), so no parameter is added and bundles keep their keys. A stem followed by anything else keeps
the scaled kernel and loses the constant, with a warning. One thing is not folded: zero padding, which the RGB model
fills with its per-channel mean colour and the grey model with the mean grey, so the output rows and columns that
touch the padding differ slightly (a different image border, not a folding error; the tests compare with the RGB
model on the same grey-padded image).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


def fold_rgb_kernel(weight: torch.Tensor, mean: Sequence[float], std: Sequence[float], gray_mean: float,
                    gray_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB kernels (O, 3, kh, kw) → (grey kernels (O, 1, kh, kw), offset (O,) to add to the stem's output).

    mean/std are the RGB input statistics, gray_mean/gray_std those the 1-channel input is normalised with."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    scale, shift = (gray_std / s).to(weight.dtype), ((gray_mean - m) / s).to(weight.dtype)
    return (weight * scale).sum(dim=1, keepdim=True), (weight * shift).sum(dim=(1, 2, 3))  # equal stats: the sum


def spread_gray_kernel(weight: torch.Tensor, std: Sequence[float], gray_std: float) -> torch.Tensor:
    """Grey kernels (O, 1, kh, kw) → RGB kernels (O, 3, kh, kw) giving the same output on a replicated grey image.

    W_c = W · s_c / (3 s): then Σ_c W_c (g - m_c) / s_c = W (g - m) / s exactly (m is the mean of the m_c), so
    no constant is left over."""
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return (weight.double() * s / (3.0 * gray_std)).to(weight.dtype)


class _Reached(Exception):
    """Stops the probe forward pass at the first BatchNorm after the stem."""


def norm_after_stem(net: nn.Module, stem: str, in_chans: int, size: int = 64) -> str | None:
    """The name of the BatchNorm that reads the stem's output directly, or None.

    Found by a forward pass on zeros that stops at the first BatchNorm to run after the stem: it qualifies only
    when its input is the stem's output tensor itself (no activation or pooling between)."""
    conv = net.get_submodule(stem)
    norms = {m: n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    seen: dict[str, torch.Tensor] = {}
    found: list[str | None] = []

    def after_stem(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen["out"] = output

    def before_norm(module: nn.Module, args: tuple) -> None:
        if "out" in seen:
            found.append(norms[module] if args and args[0] is seen["out"] else None)
            raise _Reached

    handles = [conv.register_forward_hook(after_stem)]
    handles += [m.register_forward_pre_hook(before_norm) for m in norms]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, in_chans, size, size))
    except _Reached:
        pass
    except Exception as exc:  # noqa: BLE001 - a model that cannot run at the probe size: no fold target
        log.debug("stem probe of %s failed: %s", stem, exc)
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return found[0] if found else None


def fold_offset_key(net: nn.Module, stem: str, state: dict[str, torch.Tensor], in_chans: int
                    ) -> tuple[str, float] | None:
    """Where a stem offset goes in `state`: (key, +1) for the stem's bias, (BatchNorm running_mean key, -1), or None."""
    if f"{stem}.bias" in state:
        return f"{stem}.bias", 1.0
    norm = norm_after_stem(net, stem, in_chans)
    if norm is not None and f"{norm}.running_mean" in state:
        return f"{norm}.running_mean", -1.0
    return None
