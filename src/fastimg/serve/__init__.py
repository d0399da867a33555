"""`fastimg serve`: the engines loaded once, behind an HTTP API (FastAPI on uvicorn).

Needs the `serve` extra; importing this package without it raises MissingDependencyError
naming  pip install 'fastimg[serve]'.
"""

from ..errors import require

for _module in ("fastapi", "uvicorn", "python_multipart", "prometheus_client"):
    require(_module, "serve")

from .app import create_app  # noqa: E402
from .server import run_server  # noqa: E402
from .service import ServeOptions  # noqa: E402

__all__ = ["ServeOptions", "create_app", "run_server"]
