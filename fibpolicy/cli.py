"""What the entry points share: a user's mistake ends the command with one line, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .training.run_dir import RunDirectoryError

# Missing or damaged files, bad values, a run directory that cannot be used: errors whose message says
# everything. FIBPOLICY_TRACEBACK=1 shows the traceback anyway (for a bug that raises one of these).
USER_ERRORS = (OSError, ValueError, RunDirectoryError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the :data:`USER_ERRORS` raised inside into ``[fibpolicy] error: ...`` and exit status 1."""
    try:
        yield
    except Exception as exc:
        # hydra.utils.instantiate wraps what a constructor raised; the constructor's own message is the one to show.
        cause = exc
        while not isinstance(cause, USER_ERRORS) and isinstance(cause.__cause__, Exception):
            cause = cause.__cause__
        if not isinstance(cause, USER_ERRORS) or os.environ.get("FIBPOLICY_TRACEBACK", "") not in ("", "0"):
            raise
        sys.stdout.flush()
        print(f"[fibpolicy] error: {cause}  (FIBPOLICY_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
