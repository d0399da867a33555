"""`fastimg serve`: the engines loaded once, behind an HTTP API (FastAPI on uvicorn).

Needs the `serve` extra; importing this package without it raises MissingDependencyError
naming  pip install 'fastimg[serve]'.
"""

from ..errors import require

for _module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
    require(_module, "serve")

from .app import ServeOptions, create_app, run_server  # noqa: E402

__all__ = ["ServeOptions", "create_app", "run_server"]
