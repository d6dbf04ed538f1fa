"""--compile auto|on|off: the config refuses other values, auto compiles only where the stored measurement says it
pays for the planned images, and a compiled module keeps the plain net's state-dict keys. No inductor compile runs
here (tens of CPU seconds): the wiring is exercised through torch.compile's eager backend, which traces the net with
dynamo and wraps it exactly as inductor would, without generating C++."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from chestxray.errors import ConfigError
from chestxray.models import build_model
from chestxray.training import execution, module as module_mod
from chestxray.training.config import resolve_config
from chestxray.training.execution import COMPILE_CHOICES, COMPILE_RULES, MARGIN, choose_execution
from chestxray.training.module import ChestXrayModule

KAGGLE_RUN = 1015 * 10  # images one default run (10 epochs) steps through on the Kaggle sample's training split


@pytest.fixture
def with_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A C++ compiler on PATH whatever the machine has (the decision, not the compiler, is under test)."""
    monkeypatch.setattr(execution, "cxx_compiler", lambda: "/usr/bin/g++")


def test_config_accepts_auto_on_off_only(tmp_path: Path, synthetic_prepared: Path) -> None:
    from chestxray.training.config import COMPILE

    assert COMPILE == COMPILE_CHOICES  # the config's copy (no torch import there) matches the module's
    assert resolve_config(prepared=str(synthetic_prepared)).compile == "auto"
    with pytest.raises(ConfigError, match=r"--compile 'yes' is not one of \['auto', 'on', 'off'\]"):
        resolve_config(prepared=str(synthetic_prepared), compile="yes")
    (tmp_path / "on.yaml").write_text("compile: on\n")  # YAML 1.1 reads a bare on as True
    assert resolve_config(tmp_path / "on.yaml", prepared=str(synthetic_prepared)).compile == "on"
    (tmp_path / "off.yaml").write_text("compile: off\n")
    assert resolve_config(tmp_path / "off.yaml", prepared=str(synthetic_prepared)).compile == "off"


def test_auto_compiles_nothing_for_a_default_run_on_this_cpu(with_compiler: None) -> None:
    """Today's measurements (docs/performance.md): compiling made no training step cheaper but Lite0's in fp32 (6 %,
    after 86 CPU s of compiling), so auto compiles nothing for a default run, and nothing else for any run."""
    for (model, precision), rule in COMPILE_RULES.items():
        settings = dict(model=model, precision=precision, accelerator="cpu", image_size=128)
        choice = choose_execution(True, "auto", planned_images=KAGGLE_RUN, **settings)
        assert not choice.compile, choice
        if (model, precision) == ("efficientnet-lite0", "32-true"):
            assert rule.compiled_ms < rule.eager_ms and f"under {MARGIN:g} × the cost" in choice.reason, choice
            continue
        assert rule.compiled_ms >= rule.eager_ms, (model, rule)
        choice = choose_execution(True, "auto", planned_images=100 * KAGGLE_RUN, **settings)
        assert not choice.compile and "never pays back" in choice.reason, choice


def test_auto_compiles_only_where_the_measurement_pays(with_compiler: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision rule on a measurement where compiling pays (as it may on another CPU or a later torch)."""
    rule = execution.CompileRule(55.0, 122.0, 72.0, 128, "a measurement where compiling pays")
    monkeypatch.setitem(COMPILE_RULES, ("resnet18", "32-true"), rule)
    auto = dict(model="resnet18", precision="32-true", accelerator="cpu", image_size=128)
    on = choose_execution(True, "auto", planned_images=KAGGLE_RUN, **auto)
    assert on.compile and on.memory_format == "channels_last" and "auto" in on.reason, on
    # the break-even point: saving ≥ MARGIN × the compile cost
    per_image_s = (rule.eager_ms - rule.compiled_ms) / 1e3
    needed = int(MARGIN * rule.compile_cpu_s / per_image_s) + 1
    assert choose_execution(True, "auto", planned_images=needed, **auto).compile
    assert not choose_execution(True, "auto", planned_images=needed - 40, **auto).compile
    # the saving scales with the pixels: the same images at 64 px save a quarter, under the cost
    assert not choose_execution(True, "auto", planned_images=needed, **{**auto, "image_size": 64}).compile
    assert choose_execution(True, "auto", planned_images=needed, **{**auto, "precision": "32"}).compile
    # a tiny run (as the test suite's and the demo's) never compiles, whatever the model
    for model in ("resnet18", "cnn-small", "cnn-tiny", "efficientnet-lite0", "densenet121"):
        for size in (32, 64):
            assert not choose_execution(True, "auto", model=model, precision="32-true", accelerator="cpu",
                                        image_size=size, planned_images=8 * 600).compile, (model, size)


def test_auto_stays_eager_where_unmeasured_or_not_faster(with_compiler: None, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    big = dict(accelerator="cpu", image_size=128, planned_images=100 * KAGGLE_RUN)
    never = choose_execution(True, "auto", model="cnn-small", precision="32-true", **big)
    assert not never.compile and "never pays back" in never.reason
    unmeasured = choose_execution(False, "auto", model="cnn-tiny", precision="32-true", **big)
    assert not unmeasured.compile and unmeasured.memory_format == "contiguous"
    assert "not measured for cnn-tiny" in unmeasured.reason
    assert not choose_execution(True, "auto", model="resnet18", precision="bf16-mixed", **big).compile
    gpu = choose_execution(True, "auto", model="resnet18", precision="32-true", **{**big, "accelerator": "gpu"})
    assert not gpu.compile and "GPU" in gpu.reason
    off = choose_execution(True, "off", model="resnet18", precision="32-true", **big)
    assert not off.compile and "set explicitly" in off.reason
    assert choose_execution(True, "on", model="cnn-tiny", precision="32-true", accelerator="cpu").compile
    monkeypatch.setattr(execution, "cxx_compiler", lambda: None)
    nocc = choose_execution(True, "auto", model="resnet18", precision="32-true", **big)
    assert not nocc.compile and "no C++ compiler" in nocc.reason
    with pytest.raises(ConfigError, match="--compile on: torch.compile needs a C\\+\\+ compiler"):
        choose_execution(True, "on", model="resnet18", precision="32-true", accelerator="cpu")
    with pytest.raises(ConfigError, match="--compile 'maybe'"):
        choose_execution(True, "maybe")


def test_cxx_compiler_follows_cxx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert execution.cxx_compiler() is None
    monkeypatch.setenv("CXX", "sh")  # any executable on PATH stands for one
    assert execution.cxx_compiler() is not None and execution.cxx_compiler().endswith("/sh")


def test_compiled_module_keeps_the_nets_keys_and_trains_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module_mod, "compile_for_training", lambda net: torch.compile(net, backend="eager"))
    torch.manual_seed(0)
    module = ChestXrayModule(build_model("cnn-tiny", 2), ["a", "b"], channels_last=True, compile_net=True)
    keys = set(module.state_dict())
    images = torch.randn(4, 1, 16, 16)
    module.eval()
    with torch.no_grad():
        eager = module(images)
    assert "_compiled_net" not in module.__dict__  # validation and prediction run eagerly: nothing compiled
    module.train()
    reference = copy.deepcopy(module.net).train()(images.contiguous(memory_format=torch.channels_last))
    logits = module(images)
    assert torch.allclose(logits, reference, atol=1e-5)  # the compiled step computes what the eager net does
    compiled = module.__dict__["_compiled_net"]
    assert compiled._orig_mod is module.net  # the wrapper steps the module's own net
    assert module.compiled_net() is compiled  # compiled once, then reused
    logits.sum().backward()
    assert all(p.grad is not None for p in module.net.parameters() if p.requires_grad)
    assert set(module.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    assert all(not k.startswith("_compiled") for k, _ in module.named_modules())
    module.eval()
    with torch.no_grad():
        assert module(images).shape == eager.shape and "_compiled_net" in module.__dict__
