"""A deadline for receiving each request, which uvicorn lacks: slow ("slowloris") clients are cut off.

uvicorn's only timeout (keep-alive) covers the idle time between requests and is reset by every byte received, so a
client that trickles a header or a body one byte at a time holds its connection for ever (uvicorn issue #157). This
protocol, uvicorn's own h11 one plus a timer, gives each request `read_timeout` seconds from its first byte (or from
the connection's opening) until it has been received completely, headers and body; then the connection is answered
408 and closed. The timer stops as soon as the request is in, so a slow model never hits it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

TIMEOUT_BODY = b"request not received in time; send it again on a faster connection\n"
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a per-request receive deadline (class attribute `read_timeout`, seconds)."""

    read_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:  # the next request on a kept-alive line
            self._arm()
        super().data_received(data)
        if self.conn.their_state not in _RECEIVING:  # received in full (or broken, which uvicorn answers): stop
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        """Answer 408 (unless the app already answered) and close the connection."""
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state not in _RECEIVING:
            return
        log.info("closed a connection from %s: request not received within %.0f s", _peer(self.client),
                 self.read_timeout)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(TIMEOUT_BODY),
                                                                                        TIMEOUT_BODY))
        if self.cycle is not None:  # the app may be reading the body: it sees a disconnect, and its answer is dropped
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


def _peer(client: Any) -> str:
    return "%s:%d" % client if client else "?"


def deadline_protocol(read_timeout: float) -> type[DeadlineH11Protocol]:
    """The protocol class to give uvicorn (http=…) for a deadline of `read_timeout` seconds per request."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"read_timeout": float(read_timeout)})
