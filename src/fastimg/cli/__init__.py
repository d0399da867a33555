"""The fastimg command line: one module per command group under one click group."""

from .main import cli, main

__all__ = ["cli", "main"]
