"""The ``--max-seconds`` budget the benchmark scripts share.

A capped run (the GPU suite gives each part a few minutes) stops *starting* new rows once the budget
is spent; what it did not run is listed, never silently dropped, so a short table says why it is short.
"""

from __future__ import annotations

import time


class Budget:
    """Wall-clock budget of ``--max-seconds`` (None: unlimited); what is skipped for it is recorded."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.skipped: list[str] = []

    @property
    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        """Whether the budget is used up (never, without one)."""
        return self.seconds is not None and self.elapsed > self.seconds

    def skip(self, what: str, *, announce: bool = True) -> None:
        """Record that ``what`` was not run for the budget (and say so now, unless ``announce`` is false)."""
        self.skipped.append(what)
        if announce:
            print(f"  --max-seconds {self.seconds:g} reached: skipping {what}", flush=True)

    def summary(self) -> str:
        """One line listing everything skipped, or "" when nothing was."""
        if not self.skipped:
            return ""
        return (f"--max-seconds {self.seconds:g}: skipped {len(self.skipped)} after {self.elapsed:.0f} s: "
                + "; ".join(self.skipped))
