"""OpenVINO CPU properties given on a bench tool's command line (--ov-config KEY=VALUE)."""

import argparse


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable --ov-config KEY=VALUE option to `parser`."""
    parser.add_argument(
        "--ov-config", action="append", default=[], metavar="KEY=VALUE",
        help="an OpenVINO CPU property for every compile, e.g. SNIPPETS_MODE=DISABLE",
    )  # fmt: skip


def parse(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE pairs as a dict; a pair without '=' is refused with the form."""
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ov-config {pair!r}: give KEY=VALUE, e.g. SNIPPETS_MODE=DISABLE")
        config[key] = value
    return config
