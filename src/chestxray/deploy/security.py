"""What `chestxray serve` checks on every request and adds to every answer, before the app sees it (docs/security.md).

- Host header: only the names the server is known by (loopback names, the --host it listens on, and each
  --allowed-host), so a DNS-rebinding page (attacker.example resolving to 127.0.0.1) gets 403 and reads nothing.
  /health stays open to any Host, for load-balancer probes; it tells only that the server is up (with the
  architecture's name and the number of findings).
- Origin: a POST from a browser must be same-origin (its Origin equals the Host it was sent to) or come from an
  --allowed-origin; a cross-site form or fetch gets 403 (Origin "null" too, and Sec-Fetch-Site: cross-site when a
  browser sends no Origin). Clients without an Origin (curl, scripts) are not browsers and pass.
- Answers carry a Content-Security-Policy (the page may run only its own inline script, by hash; no framing, no
  third-party hosts), X-Frame-Options: DENY, X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer,
  Cross-Origin-Opener/Resource-Policy: same-origin, and Cache-Control: no-store (answers hold patient data).
Written as a plain ASGI middleware so that uploads stream through it unbuffered.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("", "0.0.0.0", "::")
OPEN_PATHS = ("/health",)  # answered whatever the Host header (probes); nothing private in it
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
BASE_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "cache-control": "no-store",
}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class WebPolicy:
    """Which Host names and extra Origins the server accepts, and the CSP per path (others: BASE_CSP)."""

    hosts: tuple[str, ...] = LOOPBACK_NAMES  # lower-case names without port; "*" any; "*.example.org" wildcards
    origins: tuple[str, ...] = ()  # scheme://host[:port] allowed to POST besides the server's own origin
    csp: dict[str, str] = field(default_factory=dict)


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The Host names a server listening on `bind_host` answers: loopback names, that address, and `extra`."""
    names = [*LOOPBACK_NAMES, *(n.strip().lower().strip("[]") for n in extra if n.strip())]
    if bind_host not in ANY_ADDRESS:
        names.append(bind_host.lower().strip("[]"))
    return tuple(dict.fromkeys(names))


def host_name(host_header: str) -> str:
    """The name part of a Host header, lower-case, without port or IPv6 brackets ('[::1]:8000' → '::1')."""
    text = host_header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def host_allowed(name: str, hosts: Iterable[str]) -> bool:
    """True when `name` matches one of `hosts` (exact, or an fnmatch pattern such as '*.hospital.org', or '*')."""
    return bool(name) and any(name == h or (("*" in h) and fnmatch.fnmatchcase(name, h)) for h in hosts)


def origin_refusal(method: str, headers: dict[str, str], origins: Iterable[str]) -> str | None:
    """Why a state-changing request from a browser on another site is refused, or None to let it through."""
    if method in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is None:
        if headers.get("sec-fetch-site") == "cross-site":
            return "a cross-site request (Sec-Fetch-Site: cross-site) may not send uploads"
        return None
    if origin in origins:
        return None
    parts = urlsplit(origin)
    if origin != "null" and parts.netloc and parts.netloc.lower() == headers.get("host", "").strip().lower():
        return None
    return (f"a page from {origin[:100]!r} may not send uploads to this server (cross-origin); open the server's own "
            "page, or start it with --allowed-origin for a trusted front end")


def script_hashes(html: str) -> list[str]:
    """CSP 'sha256-…' sources for each inline <script> of an HTML page (scripts with src= are not inline)."""
    found = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, flags=re.S | re.I)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found]


def page_csp(html: str, images: str = "'self' data: blob:") -> str:
    """The CSP of an HTML page of ours: its own inline scripts (by hash) and same-origin requests only."""
    scripts = " ".join(["'self'", *script_hashes(html)])
    return (f"default-src 'none'; script-src {scripts}; style-src 'self' 'unsafe-inline'; img-src {images}; "
            "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _refuse(status: int, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
    headers.append((b"content-security-policy", BASE_CSP.encode()))
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """ASGI middleware enforcing a WebPolicy: Host and Origin checks, security headers on every answer."""

    def __init__(self, app: Callable[..., Awaitable[None]], policy: WebPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        refusal = None
        name = host_name(headers.get("host", ""))
        if path not in OPEN_PATHS and not host_allowed(name, self.policy.hosts):
            refusal = (f"Host {name[:100]!r} is not a name of this server (a DNS-rebinding page?); if it is, start "
                       "the server with --allowed-host NAME")
        refusal = refusal or origin_refusal(scope["method"], headers, self.policy.origins)
        if refusal is not None:
            log.warning("refused %s %s: %s", scope["method"], path, refusal)
            for message in _refuse(403, refusal):
                await send(message)
            return
        csp = self.policy.csp.get(path, BASE_CSP)

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in (*HEADERS.items(), ("content-security-policy", csp))
                         if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
