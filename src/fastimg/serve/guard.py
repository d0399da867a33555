"""Who may reach the server from a browser: the Host a request names and the Origin it comes from,
checked on every route, HTTP and WebSocket alike, before anything else runs.

- **Host**: a server on loopback answers only to loopback names (and `--allow-host` ones). A web
  page can point a name it owns at 127.0.0.1 (DNS rebinding) and then read this server as its
  own origin; the Host header still carries that name, so it is refused.
- **Origin**: browsers send it with cross-site requests, and send some of them (a multipart POST)
  without asking first, so a page elsewhere could run a transform even where it cannot read the
  answer. A request whose Origin is neither this server's own (the page it serves) nor a `--cors`
  origin is refused. Clients that are no browser send no Origin and are not affected.
"""

import ipaddress
import json

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str:
    """The name in a Host header, without its port: '127.0.0.1:8000' -> '127.0.0.1',
    '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(bind_host: str | None, extra: tuple[str, ...]) -> frozenset | None:
    """The Host names a server bound to `bind_host` answers to: on loopback its own address,
    the loopback names and `extra` (any loopback IP address is always taken: rebinding needs a
    name); on other addresses only `extra` where given, else any (None)."""
    from .admission import is_loopback

    names = frozenset(host_name(name) for name in extra)
    if bind_host is None or is_loopback(bind_host):
        return frozenset(LOOPBACK_NAMES) | {host_name(bind_host or "127.0.0.1")} | names
    return names or None


def _loopback_address(name: str) -> bool:
    """Whether `name` is a loopback IP address (127.0.0.0/8, ::1), not a name."""
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware refusing (403) requests whose Host or Origin the server does not serve."""

    def __init__(self, app, hosts: frozenset | None, cors: tuple[str, ...]):
        self.app, self.hosts = app, hosts
        self.cors = tuple(origin.rstrip("/") for origin in cors)  # (as browsers send them)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            reason = self.refusal(headers.get("host"), headers.get("origin"))
            if reason is not None:
                await _refuse(scope, send, reason)
                return
        await self.app(scope, receive, send)

    def refusal(self, host: str | None, origin: str | None) -> str | None:
        """Why a request naming `host` from `origin` is refused, or None."""
        if self.hosts is not None:
            name = host_name(host) if host else None
            if name is None or not (name in self.hosts or _loopback_address(name)):
                return (
                    f"this server does not answer to the host {host!r}: use one it is bound to "
                    "(127.0.0.1, localhost) or start it with --allow-host NAME"
                )
        if origin is None or "*" in self.cors or origin.rstrip("/") in self.cors:
            return None
        if host and origin.partition("://")[2].lower() == host.lower():
            return None  # the page this server serves
        return f"pages from {origin} may not use this server: start it with --cors ORIGIN"


async def _refuse(scope, send, reason: str) -> None:
    """403 with {"detail": reason}; a WebSocket handshake is refused before it completes."""
    body = json.dumps({"detail": reason}).encode()
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # (the server answers 403)
            return
        await send({"type": "websocket.http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
