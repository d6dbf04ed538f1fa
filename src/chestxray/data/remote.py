"""PREPARED over http(s)://: a streaming reader with a bounded timeout whose every failure names the URL.

A shard is one long GET. The server's Content-Length is held against the bytes that arrive, so a connection that
drops in the middle of a shard is a DataError ("the connection dropped after X of Y bytes; retry, or check the
server"), never a short read that a tar reader would take for a damaged or merely shorter shard. Every connect
and every read waits at most CHESTXRAY_HTTP_TIMEOUT seconds (default 60) for the server.
"""

from __future__ import annotations

import os
from http.client import HTTPException, HTTPResponse, IncompleteRead
from typing import Any

from chestxray.errors import ConfigError, DataError

HTTP_TIMEOUT_S = 60.0  # default seconds a connect or a read may wait for the server
TIMEOUT_ENV = "CHESTXRAY_HTTP_TIMEOUT"


def http_timeout() -> float:
    """Seconds to wait for the server per connect and per read: $CHESTXRAY_HTTP_TIMEOUT, else HTTP_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return HTTP_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds (default "
                          f"{HTTP_TIMEOUT_S:g})")
    return value


def _timed_out(url: str, timeout: float, when: str) -> DataError:
    return DataError(f"{url}: the server sent nothing for {timeout:g} s {when} (read timeout); retry, or check "
                     f"the server; {TIMEOUT_ENV} sets the limit (default {HTTP_TIMEOUT_S:g} s)")


class HttpBody:
    """The body of one GET, read as a binary stream that raises DataError on a drop, a stall or a short body."""

    def __init__(self, url: str, response: HTTPResponse, timeout: float) -> None:
        self.url, self.response, self.timeout = url, response, timeout
        length = response.headers.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None
        self.received = 0
        self.headers = response.headers

    def _progress(self) -> str:
        return f"{self.received:,} of {self.total:,} bytes" if self.total is not None else f"{self.received:,} bytes"

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left when n < 0); fewer only at the announced end of the body."""
        try:
            data = self.response.read() if n is None or n < 0 else self.response.read(n)
        except TimeoutError:
            raise _timed_out(self.url, self.timeout, f"after {self._progress()}") from None
        except IncompleteRead as exc:  # read() of the whole body: http.client checks the length itself
            data = exc.partial
        except (OSError, HTTPException) as exc:
            raise DataError(f"{self.url}: the connection failed after {self._progress()} ({type(exc).__name__}: "
                            f"{exc}); retry, or check the server and the network") from None
        self.received += len(data)
        if self.total is not None and self.received < self.total and (n is None or n < 0 or len(data) < n):
            raise DataError(f"{self.url}: the connection dropped after {self._progress()}; retry, or check the "
                            "server and the network (the file itself may be whole)")
        return data

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> HttpBody:  # noqa: PYI034 - a final class, never subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_http(url: str, method: str = "GET") -> Any:
    """A streaming GET body (HttpBody) or a HEAD response; HTTP errors, an unreachable or silent server are
    DataErrors naming the URL and what to do."""
    import urllib.error
    import urllib.request

    timeout = http_timeout()
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "chestxray"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL and that the server holds this "
                        "file") from None
    except TimeoutError:
        raise _timed_out(url, timeout, "before answering") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            raise _timed_out(url, timeout, "before answering") from None
        raise DataError(f"{url}: cannot reach the server ({reason}); check the network and the URL") from None
    return response if method == "HEAD" else HttpBody(url, response, timeout)
