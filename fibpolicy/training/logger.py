"""Run metrics: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from ..atomic import write_text


class MetricsLogger:
    """Appends ``{"step": ..., **metrics}`` lines and mirrors numeric values to TensorBoard."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self.writer = SummaryWriter(str(Path(run_dir) / "tb")) if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        # A killed run may have logged past its last checkpoint; the resumed run logs those steps again.
        kept, torn = [], []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                torn.append(number)  # a line cut short by a kill mid-write
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
        if torn:
            print(f"[fibpolicy] warning: {self.path}: dropped {len(torn)} unreadable line(s) "
                  f"(line {', '.join(map(str, torn[:5]))}), left by a run killed while writing", flush=True)
        write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record ``metrics`` at optimisation step ``step``."""
        row = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value
