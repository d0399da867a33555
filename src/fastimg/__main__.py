"""`python -m fastimg ...`: the fastimg command, for where its script is not on PATH."""

from .cli import cli

cli(prog_name="fastimg")
