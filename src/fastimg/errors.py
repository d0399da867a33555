"""Domain errors: each names the problem and the fix; the CLI turns them into click errors."""


class FastImgError(Exception):
    """Base of every error fastimg raises on purpose."""


class InputError(FastImgError):
    """A user-supplied value (image, prompt, parameter) cannot be used as given."""


class OutputError(FastImgError):
    """An output cannot be written (disk full, no permission); nothing is left half-written."""


class EngineError(FastImgError):
    """An engine file is missing, damaged, or cannot run here."""


class ManifestError(EngineError):
    """An engine folder's manifest.json is missing, unreadable or of an unknown format."""


class Cancelled(FastImgError):
    """A call stopped between its stages because its caller asked (`should_stop`)."""


class MissingDependencyError(FastImgError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    """Import an optional module, or raise an error naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed: install it with  pip install 'fastimg[{extra}]'"
        ) from exc
