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
