"""Whether the engine runs of the current call give their scratch memory back as they end.

Backends keep the activation memory of their largest run for the next one (ONNX Runtime's
arena, OpenVINO's infer-request buffers): right for calls alike, wrong after one far larger
than the rest, whose gigabytes would stay with the process. The call that is such an outlier
runs inside `giving_back_scratch()`, and each backend's run() asks `scratch_given_back()`.
"""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_GIVE_BACK = ContextVar("fastimg_give_back_scratch", default=False)


@contextlib.contextmanager
def giving_back_scratch(wanted: bool = True) -> Iterator[None]:
    """A context in which engine runs (in this thread or task) free their scratch as they end."""
    token = _GIVE_BACK.set(wanted)
    try:
        yield
    finally:
        _GIVE_BACK.reset(token)


def scratch_given_back() -> bool:
    """Whether the current run should free its scratch memory when it ends."""
    return _GIVE_BACK.get()
