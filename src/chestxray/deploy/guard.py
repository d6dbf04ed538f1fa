"""A child process tree that dies with its parent, even when the parent is killed with -9 (Linux).

`mlflow server` starts a tree of its own (uvicorn, a job runner, seven huey consumers); a signal to its first
process does not reach the rest. So `chestxray ui` starts this small guard instead (`python -m
chestxray.deploy.guard CMD…`) as the leader of a new process group, with the kernel's parent-death signal set
(prctl PR_SET_PDEATHSIG, inherited across exec): when `chestxray ui` dies for any reason the guard receives
SIGTERM and stops the whole group — SIGTERM first, SIGKILL for what is left after a grace period. The guard also
stops the group when the command exits by itself, so no orphan keeps the port. Elsewhere than Linux the parent-death
signal is unavailable and the guard only does the second part (documented in docs/security.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GRACE_S = 20.0


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a freshly forked child (Popen's preexec_fn): receive `sig` when the parent dies; exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(70)  # cannot be tied to the parent: refuse to start rather than risk an orphan
    if os.getppid() != parent_pid:  # the parent died between fork and prctl: nobody would stop us later
        os._exit(70)


def guarded_command(cmd: list[str]) -> list[str]:
    """`cmd` run under this guard."""
    return [sys.executable, "-m", "chestxray.deploy.guard", *cmd]


def start_guarded(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` under the guard, as a new process group tied to this process's life; the guard's Popen."""
    parent = os.getpid()
    return subprocess.Popen(guarded_command(cmd), env=env, start_new_session=True,
                            preexec_fn=lambda: die_with_parent(parent))  # noqa: PLW1509 - no threads run here


def stop_group(pgid: int, grace: float = GRACE_S, spare: int | None = None) -> None:
    """SIGTERM every process of group `pgid`, then SIGKILL what remains after `grace` seconds (except `spare`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _members(pgid, spare):  # zombies count as gone: their parent reaps them
        time.sleep(0.2)
    for pid in _members(pgid, spare):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _members(pgid: int, spare: int | None) -> list[int]:
    """Live (not zombie) processes of group `pgid`, read from /proc; [] where /proc is missing."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == spare:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def main(argv: list[str]) -> int:
    """Run argv in this process group; on SIGTERM/SIGINT or when it exits, stop the group; its exit code."""
    if not argv:
        print("usage: python -m chestxray.deploy.guard COMMAND [ARG…]", file=sys.stderr)
        return 2
    me = os.getpid()
    child = subprocess.Popen(argv)
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_group(os.getpgid(me), spare=me)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = child.wait()
    if not stopping:  # the command ended by itself: its own children must not outlive it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_group(os.getpgid(me), spare=me)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
