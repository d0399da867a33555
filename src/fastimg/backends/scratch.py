"""Whether the engine runs of the current call give their scratch memory back as they end.

Backends keep the activation memory of their largest run for the next one (ONNX Runtime's
arena, OpenVINO's infer-request buffers): right for calls alike, wrong after one far larger
than the rest, whose gigabytes would stay with the process. The call that is such an outlier
runs inside `giving_back_scratch()`: each backend's run() asks `scratch_given_back()`, and a
session that keeps more than its runs can free (OpenVINO's compiled model and requests, ONNX
Runtime's session: buffers and kernels sized for the largest shapes they ran) asks
`give_back_after_the_call(self)` to have its `give_back()` (a load anew) called once, as the
call's context ends.
"""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

# In a call that gives its memory back: the sessions to give back at its end (a dict as an
# ordered set); None elsewhere.
_GIVE_BACK: ContextVar[dict | None] = ContextVar("fastimg_give_back_scratch", default=None)


@contextlib.contextmanager
def giving_back_scratch(wanted: bool = True) -> Iterator[None]:
    """A context in which engine runs (in this thread or task) free their scratch as they end,
    and the sessions that asked for it give back what they still hold when it ends."""
    sessions = {} if wanted else None
    token = _GIVE_BACK.set(sessions)
    try:
        yield
    finally:
        _GIVE_BACK.reset(token)
        for session in sessions or ():
            session.give_back()


def scratch_given_back() -> bool:
    """Whether the current run should free its scratch memory when it ends."""
    return _GIVE_BACK.get() is not None


def give_back_after_the_call(session) -> None:
    """Have `session.give_back()` called once when the current give-back context ends (no-op
    outside one)."""
    sessions = _GIVE_BACK.get()
    if sessions is not None:
        sessions[session] = None
