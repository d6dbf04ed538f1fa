"""Decode image files in order, in a process pool that survives a decoder crashing its process.

A native decoder (libpng, libjpeg, a DICOM codec) that segfaults or aborts kills its worker process, and Python's
ProcessPoolExecutor then fails every task in flight. DecodePool rebuilds the pool and decodes the chunks that were
in flight one file at a time in a separate one-process pool, so the file that kills its process is found exactly:
it is reported as "decoder process crashed" (the caller quarantines it) and every other file is decoded.
With workers <= 1 files are decoded in this process (fastest for small jobs; no crash isolation).
Workers die with their parent (Linux PR_SET_PDEATHSIG): a prepare killed with SIGKILL leaves no decoder behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from chestxray.data.imaging import load_square
from chestxray.errors import DataError

log = logging.getLogger(__name__)

Decoded = tuple[bytes | None, str]  # (raw pixels, "") or (None, reason)
CRASHED = ("decoder process crashed while decoding this file (killed by a signal: a fault in a native image "
           "library, or out of memory); re-export the file, or remove it")


def decode_chunk(paths: list[str], size: int, resize: str, max_pixels: int | None) -> list[Decoded]:
    """Worker task: (raw pixels, '') per readable image, (None, reason) per unusable one."""
    out: list[Decoded] = []
    for path in paths:
        try:
            out.append((load_square(path, size, resize, max_pixels=max_pixels).tobytes(), ""))
        except DataError as exc:
            out.append((None, str(exc).removeprefix(f"{path}: ")))
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop a 100k-image job; it is quarantined
            out.append((None, f"unexpected {type(exc).__name__} while decoding ({exc}); re-export the file"))
    return out


def _die_with_parent(parent: int) -> None:
    """Worker start-up: have the kernel SIGKILL this worker when its parent dies (else an orphaned worker waits
    forever on its task queue after `kill -9` of prepare)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _executor(workers: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),))


class _Done:
    """A finished result with the Future interface, for in-process decoding."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class DecodePool:
    """Submit chunks of paths, take their results back in submission order (see the module doc)."""

    def __init__(self, workers: int, size: int, resize: str, max_pixels: int | None) -> None:
        self.workers, self.args = int(workers), (size, resize, max_pixels)
        self.pending: deque[tuple[Any, list[str]]] = deque()
        self.crashed = 0
        self._pool: cf.ProcessPoolExecutor | None = self._new_pool()
        self._solo: cf.ProcessPoolExecutor | None = None

    def _new_pool(self) -> cf.ProcessPoolExecutor | None:
        return _executor(self.workers) if self.workers > 1 else None

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, paths: list[str]) -> None:
        task = (self._pool.submit(decode_chunk, paths, *self.args) if self._pool is not None
                else _Done(decode_chunk(paths, *self.args)))
        self.pending.append((task, paths))

    def next(self) -> list[Decoded]:
        """Results of the oldest submitted chunk."""
        task, paths = self.pending.popleft()
        try:
            return task.result()
        except BrokenProcessPool:
            self._rebuild()
            return self._isolate(paths)

    def _rebuild(self) -> None:
        """A worker died: start a fresh pool and resubmit the chunks still in flight that had not finished."""
        log.warning("a decoder process crashed; rebuilding the pool and retrying the files in flight one by one")
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._new_pool()
        kept: deque[tuple[Any, list[str]]] = deque()
        for task, paths in self.pending:
            ok = task.done() and not task.cancelled() and task.exception() is None
            kept.append((task if ok else _Done(self._isolate(paths)), paths))
        self.pending = kept

    def _isolate(self, paths: list[str]) -> list[Decoded]:
        """Decode each file alone in a one-process pool: a crash then names exactly one file."""
        out: list[Decoded] = []
        for path in paths:
            self._solo = self._solo or _executor(1)
            try:
                out.extend(self._solo.submit(decode_chunk, [path], *self.args).result())
            except BrokenProcessPool:
                log.warning("%s: %s", path, CRASHED)
                self.crashed += 1
                out.append((None, CRASHED))
                self._solo.shutdown(wait=True)
                self._solo = None
        return out

    def close(self) -> None:
        for pool in (self._pool, self._solo):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._solo = None


def drain(pool: DecodePool, tasks: deque[list[str]], window: int,
          progress: Callable[[int], None] | None = None) -> list[Decoded]:
    """Keep up to `window` chunks in flight, then return the oldest chunk's results."""
    while tasks and len(pool) < window:
        pool.submit(tasks.popleft())
    chunk = pool.next()
    if progress:
        progress(len(chunk))
    return chunk
