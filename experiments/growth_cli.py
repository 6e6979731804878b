"""Command-line plumbing shared by the growth examples (``experiments/growth_*.py``).

* :class:`Parser`: an ``argparse.ArgumentParser`` whose usage errors are one line
  ``error: ...`` on stderr with exit code 2;
* :func:`int_at_least`: an argparse ``type`` refusing integers below a bound;
* :func:`pick`: an explicit flag wins; otherwise the ``--quick`` or the full default;
* :func:`run_cli`: runs ``main(argv)`` and turns bad input (``ValueError``, ``OSError``,
  ``FloatingPointError``) into one ``error:`` line and exit code 2 (``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["Parser", "int_at_least", "pick", "run_cli"]


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with a ``--debug`` flag and one-line usage errors (exit 2)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def pick(explicit: Any, quick: bool, quick_default: Any, default: Any) -> Any:
    """``explicit`` when the flag was given, else the ``--quick`` or the full default."""
    if explicit is not None:
        return explicit
    return quick_default if quick else default


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Runs ``main(argv)``; bad input becomes one ``error:`` line and exit code 2.

    Args:
      main: the example's ``main(argv)``.
      argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
      The exit code: 0, or 2 after an error (``--debug`` re-raises it instead).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with logging_redirect_tqdm():
            main(argv)
    except (ValueError, OSError, FloatingPointError) as err:
        if "--debug" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
