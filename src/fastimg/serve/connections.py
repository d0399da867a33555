"""Connections the server holds, bounded: a request's head must arrive in time, and one client
address may hold only so many sockets (uvicorn's limit_concurrency bounds them all).

uvicorn times out a connection only between requests (keep-alive); a socket that never sends a
request, or sends its header lines one every few seconds (slowloris), is held for ever. This is
uvicorn's HTTP/1.1 protocol with a deadline for each request head, from the connection's start
and from the end of each response, and a count of sockets per client address.
"""

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(head_seconds: float, per_client: int) -> type:
    """An H11Protocol class whose connections must send each request head within
    `head_seconds`, at most `per_client` of them open from one address (counted per server)."""
    open_by_client: dict[str, int] = {}

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's HTTP/1.1 with a deadline for each request head and a cap per client."""

        _head_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            client = self.client[0] if self.client else "?"
            open_by_client[client] = open_by_client.get(client, 0) + 1
            self._counted = client
            if open_by_client[client] > per_client:
                self.logger.warning("%s holds %d connections already: closing its newest", client,
                                    per_client)  # fmt: skip
                transport.close()
                return
            self._await_head()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            self._uncount()
            super().connection_lost(exc)

        def _uncount(self) -> None:
            if self._counted is not None:
                open_by_client[self._counted] -= 1
                if not open_by_client[self._counted]:
                    del open_by_client[self._counted]
                self._counted = None

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel_head_timer()  # a request's head came: its body has its own deadline

        def handle_websocket_upgrade(self, event) -> None:
            # The socket passes to the WebSocket protocol, which is told when it closes (this
            # one is not): its count ends here; open streams are counted by the stream.
            self._cancel_head_timer()
            self._uncount()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_head()  # the next request's

        def _await_head(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(head_seconds, self._head_too_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_late(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return GuardedH11Protocol
