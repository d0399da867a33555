"""`fastimg serve` on uvicorn: the app run until SIGTERM or SIGINT, stopping gracefully."""

import contextlib
import signal
import threading
from dataclasses import replace

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from ..errors import EngineError
from .app import create_app
from .connections import guarded_protocol
from .service import ServeOptions, Service


class Server(uvicorn.Server):
    """uvicorn's server, whose SIGTERM (or SIGINT) also stops admission at once, and which
    exits normally after a graceful stop (uvicorn raises the signal again once stopped, which
    would end the process by the signal)."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        """Stop admitting at once, then let uvicorn stop as it does."""
        self.service.stop_soon()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        """Our handle_exit for uvicorn's signals while the server runs (main thread only);
        the handlers before it afterwards, without raising the signal again."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(app, host: str, port: int, options: ServeOptions, **more) -> uvicorn.Config:
    """uvicorn's configuration for the app with `options`' connection limits: HTTP/1.1 with a
    deadline for each request head and a cap per client address, `max_connections` in all."""
    settings = dict(log_level="info", server_header=False, timeout_keep_alive=5)
    settings.update(more)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # No proxy headers: X-Forwarded-For from a loopback client is not the client's address.
        proxy_headers=False,
        http=guarded_protocol(options.head_seconds, options.max_connections_per_client),
        limit_concurrency=options.max_connections,
        **settings,
    )


def run_server(options: ServeOptions, host: str, port: int, load=None) -> None:
    """Run the API on host:port until SIGTERM or SIGINT; the engines load once it is up.

    On a signal it stops admitting, lets running requests finish, and returns. Engines that
    cannot be loaded stop the server with an EngineError.
    """
    app = create_app(replace(options, bind_host=host), load)
    service = app.state.service
    config = uvicorn_config(app, host, port, options)
    server = Server(config, service)
    service.on_failure = lambda message: setattr(server, "should_exit", True)
    server.run()
    if service.state == "failed":
        raise EngineError(f"the engines could not be loaded: {service.error}")
