"""The one kind of error a user sees: one line, no traceback, exit code 1."""

from __future__ import annotations

import sys
from typing import Callable

class StageError(Exception):
    """A problem the user can fix (bad param, bad input file); shown as one line, no traceback."""


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(), turning StageError into a one-line message and exit code 1."""
    try:
        main()
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
