"""The server: engines that cannot load stop it with the reason (a graceful SIGTERM is in
test_cli_serve.py, against the real command)."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("uvicorn")

from fastimg.errors import EngineError  # noqa: E402
from fastimg.serve import ServeOptions, run_server  # noqa: E402


def test_the_server_stops_with_the_reason_when_the_engines_cannot_load():
    def load():
        raise EngineError("engine unet.onnx is damaged")

    with pytest.raises(EngineError, match="could not be loaded: engine unet.onnx is damaged"):
        run_server(ServeOptions(), "127.0.0.1", 0, load=load)
