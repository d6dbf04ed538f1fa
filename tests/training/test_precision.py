"""--precision auto: native-bf16 CPU detection matches the kernel's flags; bf16 on CPU learns as well as fp32."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chestxray.training import precision as precision_mod
from chestxray.training.config import resolve_config
from chestxray.training.precision import choose_precision
from chestxray.training.train import train


def _kernel_says_bf16() -> bool:
    """Independent reading of /proc/cpuinfo: does any 'flags' line list avx512_bf16 or amx_bf16?"""
    text = Path("/proc/cpuinfo").read_text()
    return bool(re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", text, re.MULTILINE))


def test_auto_precision_detects_this_cpu() -> None:
    assert Path("/proc/cpuinfo").is_file(), "this test reads the Linux kernel's CPU flags"
    choice = choose_precision("auto", "cpu")
    assert choice.precision == ("bf16-mixed" if _kernel_says_bf16() else "32-true"), choice
    assert "/proc/cpuinfo" in choice.reason and choice.reason.startswith("auto: CPU")
    import torch

    probe = getattr(torch._C._cpu, "_get_cpu_capability", None)
    if probe is not None:  # torch's own probe agrees with the kernel
        capability = probe()
        assert bool(capability.get("avx512_bf16") or capability.get("amx_bf16")) == _kernel_says_bf16()
    assert choose_precision("32-true", "cpu").precision == "32-true"
    assert choose_precision("bf16-mixed", "cpu").reason == "set explicitly (--precision)"


def test_auto_precision_follows_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice follows the flags line: with amx_bf16 → bf16-mixed, with plain AVX-512 only → 32-true."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision_mod, "CPUINFO", cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\nprocessor\t: 1\n")
    assert choose_precision("auto", "cpu").precision == "32-true"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16\n")
    choice = choose_precision("auto", "cpu")
    assert choice.precision == "bf16-mixed" and "amx_bf16" in choice.reason


def test_bf16_cpu_run_matches_fp32_auroc_and_run_json_records_execution(
        tmp_path: Path, synthetic_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp32 run is compiled (--compile on) through torch.compile's eager backend: dynamo traces and wraps the net
    as inductor would, without its tens of CPU seconds of C++; the checkpoint and bundle keep the plain net's keys."""
    import torch
    from safetensors.torch import load_file

    from chestxray.openmp import describe_wait
    from chestxray.training import execution, module

    monkeypatch.setattr(execution, "cxx_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(module, "compile_for_training", lambda net: torch.compile(net, backend="eager"))
    results = {}
    for prec in ("32-true", "bf16-mixed"):
        config = resolve_config(prepared=str(synthetic_prepared), model="cnn-small", epochs=2, batch_size=16,
                                lr=3e-3, augment="none", num_workers=0, mlflow=False, progress=False,
                                precision=prec, accelerator="cpu", out=str(tmp_path / prec),
                                compile="on" if prec == "32-true" else "auto")
        results[prec] = train(config)
        run_info = json.loads((tmp_path / prec / "run.json").read_text())
        card = json.loads((tmp_path / prec / "bundle" / "card.json").read_text())
        assert run_info["precision"] == card["precision"] == prec
        assert card["precision_reason"] == "set explicitly (--precision)"
        assert run_info["memory_format"] == "channels_last" and run_info["compile"] is (prec == "32-true")
        assert run_info["openmp_wait"] == describe_wait()
        assert run_info["execution_reason"].endswith("set explicitly (--compile on)") if prec == "32-true" \
            else "auto: torch.compile off (for cnn-small at bf16-mixed it never pays back" in run_info["execution_reason"]
    keys = {k.removeprefix("net.") for k in torch.load(tmp_path / "32-true" / "checkpoints" / "last.ckpt",
                                                      weights_only=True)["state_dict"]}
    assert keys == set(load_file(tmp_path / "32-true" / "bundle" / "model.safetensors"))
    assert keys == set(load_file(tmp_path / "bf16-mixed" / "bundle" / "model.safetensors"))  # compiled or not
    assert not any("_orig_mod" in k or "compiled" in k for k in keys)
    fp32, bf16 = results["32-true"].best_val_auroc, results["bf16-mixed"].best_val_auroc
    assert fp32 > 0.9 and bf16 >= fp32 - 0.02, (fp32, bf16)
