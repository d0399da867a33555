"""What every fastimg command shares: domain errors as click errors, messages on stderr."""

from functools import wraps

import click

from ..errors import FastImgError


def domain_errors(command):
    """Turn fastimg's own errors into click errors: message on stderr, exit code 1."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FastImgError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def echo_err(message: str) -> None:
    """A message for the person at the terminal (stderr), apart from the command's output."""
    click.echo(message, err=True)


class PathType(click.Path):
    """click.Path that refuses a NUL character with a usage error (os.stat raises a bare
    ValueError on it, which click.Path lets through as a traceback)."""

    def convert(self, value, param, ctx):
        """The path, checked as click.Path checks it, after refusing a NUL character."""
        if isinstance(value, str) and "\x00" in value:
            self.fail(f"{value!r} is not a path: it holds a NUL character", param, ctx)
        return super().convert(value, param, ctx)
