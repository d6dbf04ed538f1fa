"""How the training step runs besides its precision: memory layout, and eager or compiled (`--compile auto|on|off`).

`torch.compile` (inductor) turns the training step's graph into oneDNN convolutions plus generated, fused C++ for the
element-wise work around them. It costs a one-time compile (tens of CPU seconds, paid again for a new graph) and
pays that back only where each step gets cheaper by enough, for enough steps. `auto` decides from measurements
stored here per (architecture, precision) on the CPU (bench/bench_train_step.py, docs/performance.md): compile when
the CPU seconds it is measured to save over the planned training images exceed its compile cost by MARGIN; off for
an architecture or precision not measured, off on a GPU (not measured here), off without a C++ compiler (inductor
needs one on the CPU). The choice and its reason are recorded in run.json.

What compiling leaves unchanged: the compiled module is not a submodule of the LightningModule, so checkpoints,
last.ckpt/best.ckpt and the bundle hold the plain net's keys (no `_orig_mod.` prefix) and a run can be resumed with
compile switched either way; validation and the short or single-image batches run eagerly (no eval-mode graph to
compile; the batch dimension is marked dynamic, so batches of 31 and 32 share one graph); random draws inside the
net use eager's generator (inductor's `fallback_random`), so one seed gives one result, compiled or not, up to
floating-point rounding.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chestxray.errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("auto", "on", "off")
# auto compiles only when the predicted saving exceeds the compile cost by this factor. 3, not less: the one end-to-end
# check (bench/bench_train_e2e.py, resnet18 fp32 128 px, 2,048 training images, predicted saving 1.9x the cost) took
# 11 % MORE CPU compiled than eager under the same load; the 2-step figures above overstate the saving.
MARGIN = 3.0


@dataclass(frozen=True)
class CompileRule:
    """One measurement of a training step (forward, loss, backward, Adam) on the CPU, eager channels_last against
    compiled, at `size` px; the saving per image is scaled by pixel count for other sizes (convolution work grows
    with the pixels, the compile cost hardly does)."""

    compile_cpu_s: float  # cold compile: the first step's extra CPU over a steady one
    eager_ms: float  # CPU ms per image, eager channels_last
    compiled_ms: float  # CPU ms per image, compiled
    size: int
    measured: str  # where the figures come from

    def saving_s(self, images: int, size: int) -> float:
        """CPU seconds saved over `images` training images at `size` px (0 where compiling is not faster)."""
        per_image = max(0.0, self.eager_ms - self.compiled_ms) / 1e3 * (size / self.size) ** 2
        return per_image * images


_VM = "bench/bench_train_step.py, batch 32, 2-core Xeon (Sapphire Rapids), docs/performance.md"
# (architecture, precision) → measurement; anything else stays eager under auto. The whole grid was measured on the
# idle machine with chestxray's short OpenMP spin (chestxray.openmp): the 122 → 72 ms for resnet18 measured before,
# under load with libgomp's long spin, was mostly spinning that the compiled graph's fewer operator boundaries avoided.
# Only Lite0 in fp32 steps faster compiled (6 %, after 86 CPU s of compiling): auto compiles it for runs of about
# 135,000 training images at 128 px or more (MARGIN x the cost).
COMPILE_RULES: dict[tuple[str, str], CompileRule] = {
    ("cnn-small", "32-true"): CompileRule(24.2, 18.6, 21.4, 128, _VM),
    ("cnn-small", "bf16-mixed"): CompileRule(26.6, 11.0, 13.9, 128, _VM),
    ("resnet18", "32-true"): CompileRule(40.2, 29.5, 32.7, 128, _VM),
    ("resnet18", "bf16-mixed"): CompileRule(48.9, 15.6, 17.0, 128, _VM),
    ("efficientnet-lite0", "32-true"): CompileRule(85.7, 32.3, 30.4, 128, _VM),
    ("efficientnet-lite0", "bf16-mixed"): CompileRule(111.0, 39.7, 41.0, 128, _VM),
    ("densenet121", "32-true"): CompileRule(202.1, 75.3, 77.7, 128, _VM),
    ("densenet121", "bf16-mixed"): CompileRule(241.3, 48.2, 49.0, 128, _VM),
}


@dataclass(frozen=True)
class ExecutionChoice:
    """How the training step runs besides its precision (memory layout, eager or compiled) and why, in words."""

    memory_format: str  # "channels_last" or "contiguous"
    compile: bool
    reason: str


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU ($CXX, else g++, clang++ or c++ on PATH), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _on_gpu(accelerator: str) -> bool:
    """Whether Lightning will train on a GPU for this --accelerator."""
    if accelerator in ("gpu", "cuda", "mps"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def choose_execution(channels_last: bool, compile: str = "off", *, model: str = "", precision: str = "32-true",
                     accelerator: str = "cpu", image_size: int = 0, planned_images: int = 0) -> ExecutionChoice:
    """Resolve --compile for this run (see the module doc); raises ConfigError for `on` without a C++ compiler on
    the CPU. planned_images: the training images one process will step through (steps × batch size)."""
    layout = "channels_last" if channels_last else "contiguous"
    if compile not in COMPILE_CHOICES:
        raise ConfigError(f"--compile {compile!r} is not one of {list(COMPILE_CHOICES)}")
    on_gpu = _on_gpu(accelerator)
    if compile == "off":
        return ExecutionChoice(layout, False, f"eager PyTorch, {layout}; torch.compile off (set explicitly)")
    if compile == "on":
        if not on_gpu and cxx_compiler() is None:
            raise ConfigError("--compile on: torch.compile needs a C++ compiler on the CPU (none of $CXX, g++, clang++, "
                              "c++ found on PATH); install one (e.g. apt-get install g++) or use --compile off")
        return ExecutionChoice(layout, True, f"torch.compile (inductor), {layout}; set explicitly (--compile on)")
    return _auto(layout, model, precision, on_gpu, image_size, planned_images)


def _auto(layout: str, model: str, precision: str, on_gpu: bool, image_size: int, planned: int) -> ExecutionChoice:
    """--compile auto: compile where the stored measurement says it pays for the planned images."""
    eager = f"eager PyTorch, {layout}; auto: torch.compile off"
    if on_gpu:
        return ExecutionChoice(layout, False, f"{eager} (no measurement on a GPU; --compile on to try it)")
    precision = "32-true" if precision == "32" else precision
    rule = COMPILE_RULES.get((model, precision))
    if rule is None:
        return ExecutionChoice(layout, False, f"{eager} (not measured for {model} at {precision}; "
                               "bench/bench_train_step.py measures it, --compile on forces it)")
    if cxx_compiler() is None:
        return ExecutionChoice(layout, False, f"{eager} (no C++ compiler for inductor on this machine)")
    saved = rule.saving_s(planned, image_size or rule.size)
    figures = (f"measured {rule.eager_ms:g} → {rule.compiled_ms:g} CPU ms per image at {rule.size} px for a "
               f"{rule.compile_cpu_s:g} CPU s compile ({rule.measured})")
    if saved >= MARGIN * rule.compile_cpu_s:
        return ExecutionChoice(layout, True, f"torch.compile (inductor), {layout}; auto: for {model} at {precision} "
                               f"it saves about {saved:.0f} CPU s over the {planned} planned training images "
                               f"against about {rule.compile_cpu_s:g} to compile ({figures})")
    why = "never pays back" if rule.compiled_ms >= rule.eager_ms else \
        f"would save about {saved:.0f} CPU s over the {planned} planned training images, under {MARGIN:g} × the cost"
    return ExecutionChoice(layout, False, f"{eager} (for {model} at {precision} it {why}; {figures})")


def compile_for_training(net: nn.Module) -> Any:
    """net compiled for training steps (inductor): eager's random generator, batch size left dynamic by the caller
    (mark_batch_dynamic), so one graph serves every batch size above 1."""
    return torch.compile(net, options={"fallback_random": True})


def mark_batch_dynamic(images: torch.Tensor) -> torch.Tensor:
    """Mark the batch dimension dynamic, so a batch of another size reuses the compiled graph instead of recompiling."""
    torch._dynamo.maybe_mark_dynamic(images, 0)
    return images
