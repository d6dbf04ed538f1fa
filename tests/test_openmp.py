"""OpenMP's idle threads: chestxray's short spin reaches libgomp when chestxray is imported first, a user's own
setting is kept, and a process that loaded torch first is told so (what libgomp read is its own OMP_DISPLAY_ENV)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chestxray.openmp import SPINCOUNT

SCRIPT = ("import {first}, {second}; from chestxray.openmp import describe_wait; torch.ones(4).sum(); "
          "print('WAIT', describe_wait())")


def run(first: str, second: str, **variables: str) -> tuple[str, str]:
    """A fresh Python importing `first` then `second`: (describe_wait(), the GOMP_SPINCOUNT libgomp says it read)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **variables)
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first, second=second)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = next(line[5:] for line in proc.stdout.splitlines() if line.startswith("WAIT "))
    read = [line.split("=", 1)[1].strip().strip("'") for line in proc.stderr.splitlines()
            if line.strip().startswith("GOMP_SPINCOUNT")]
    assert read, f"libgomp printed no GOMP_SPINCOUNT with OMP_DISPLAY_ENV=VERBOSE:\n{proc.stderr[-2000:]}"
    return said, read[0]


def test_chestxray_first_gives_libgomp_the_short_spin() -> None:
    said, read = run("chestxray", "torch")
    assert read == SPINCOUNT and said.startswith(f"GOMP_SPINCOUNT={SPINCOUNT} (chestxray's default")


@pytest.mark.parametrize("variables, expected", [({"GOMP_SPINCOUNT": "123"}, "123"),
                                                 ({"OMP_WAIT_POLICY": "ACTIVE"}, "30000000000")])
def test_a_users_own_setting_is_kept(variables: dict[str, str], expected: str) -> None:
    said, read = run("chestxray", "torch", **variables)
    name, value = next(iter(variables.items()))
    assert read == expected and said == f"{name}={value} (set by you)"


def test_torch_loaded_first_keeps_libgomps_default_and_says_so() -> None:
    said, read = run("torch", "chestxray")
    assert read == "300000"
    assert "torch was imported before chestxray" in said and f"GOMP_SPINCOUNT={SPINCOUNT}" in said
