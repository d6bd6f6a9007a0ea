"""What every ``glip`` subcommand shares: range-checked flag types, output-folder checks and
locks, and one-line error messages that name flags rather than Python arguments.

Nothing here imports torch, so that ``glip --help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are not guarded there
    fcntl = None  # type: ignore[assignment]

# Longest error message printed on one line; the rest is cut (``-v`` prints it whole).
MAX_MESSAGE_CHARS = 400
LOCK_FILE = ".glip.lock"


class UsageError(Exception):
    """A wrong combination of flags or inputs: ``glip: error: ...`` and exit status 2."""


# ---------------------------------------------------------------------------------------------
# Flag types: argparse reports "argument --flag: <message>" and exits 2.
# ---------------------------------------------------------------------------------------------


def _number(text: str, kind: Callable[[str], float | int]) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    """A float in [0, 1] (score thresholds)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def overlap(text: str) -> float:
    """A float in (0, 1] (IoU thresholds: 0 would suppress every overlapping box)."""
    value = _number(text, float)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer > 0."""
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def character_span(text: str) -> tuple[int, int]:
    """``START:END`` character offsets of a phrase, 0 <= START < END."""
    parts = text.split(":")
    try:
        start, end = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END character offsets, e.g. 2:15, got {text!r}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < END, got {text!r}")
    return start, end


# ---------------------------------------------------------------------------------------------
# Output folders
# ---------------------------------------------------------------------------------------------


def ensure_writable_dir(path: Path, flag: str) -> Path:
    """Check, before any work, that folder ``path`` (given by ``flag``) exists or can be created,
    and can be written; nothing is created.

    Raises:
        UsageError: naming ``flag``, the path and the reason (a file in the way, no permission,
            a read-only file system).
    """
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():  # nearest existing ancestor: where the folder would be created
        existing = existing.parent
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file"
        raise UsageError(f"{flag} {path}: cannot be a folder, {where}")
    try:  # a real write: os.access says yes for root on a read-only mount
        with tempfile.TemporaryFile(dir=existing, prefix=".glip-write-test-"):
            pass
    except OSError as error:
        reason = "read-only file system" if error.errno == errno.EROFS else error.strerror or str(error)
        raise UsageError(f"{flag} {path}: cannot write in {existing} ({reason})") from None
    return path


@contextmanager
def output_lock(folder: Path, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on output ``folder`` (created if needed) while the block runs, so two
    runs never write the same files. The OS drops the lock when the process ends, even if killed.

    Raises:
        UsageError: another process holds the lock.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    lock_path = folder / LOCK_FILE
    with open(lock_path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UsageError(f"{flag} {folder} is in use by another glip run (pid {holder}); wait for it "
                             f"to finish or choose another {flag}") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------

# Python-API advice in library messages -> the flags that do the same on the command line.
_FLAG_ADVICE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"GLIP\.from_official\([^)]*\)"), "--checkpoint PTH --config YAML"),
    (re.compile(r"GLIP\.from_official\b"), "--checkpoint/--config"),
    (re.compile(r"GLIP\.from_pretrained\(([^)]*)\)"), r"--model \1"),
    (re.compile(r"GLIP\.from_pretrained\b"), "--model"),
    (re.compile(r"\bspans=\[\(start, end\), \.\.\.\]"), "--span START:END"),
    (re.compile(r"\bclasses="), "--classes"),
    (re.compile(r"\bcaption="), "--caption"),
    (re.compile(r"\b(overwrite|resume)=True\b"), r"--\1"),
)


def cli_message(error: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``error``'s message on one line, naming flags instead of Python arguments, cut to ``limit``."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(message).split()) or type(error).__name__
    for pattern, flag in _FLAG_ADVICE:
        text = pattern.sub(flag, text)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters; -v shows all)"
    return text
