"""``glip serve``: the HTTP API and web page."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parsers(commands, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the subcommand on ``commands``; ``command(commands, name, summary)`` makes a leaf parser."""
