"""The training log as TensorBoard scalars (``adaptctl train ... --tensorboard DIR``).

Every numeric field of a JSON-lines log record becomes a scalar of the same name at step
``iteration`` (``accepted`` as 0/1, a list such as ``inner_returns`` as ``inner_returns/0``,
``inner_returns/1``, ...); text fields (``reject_reason``) are left out. Written through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package (the ``tensorboard`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any


class TensorBoardUnavailable(ImportError):
    """The tensorboard package is not installed."""


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's numeric fields as TensorBoard tags and values (``iteration`` is the step)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "iteration":
            continue
        if isinstance(value, bool | int | float):
            out[key] = float(value)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, bool | int | float):
                    out[f"{key}/{i}"] = float(item)
    return out


class TensorBoardLog:
    """A TensorBoard event writer for training log records; use as a context manager."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch raises this when tensorboard is missing
            raise TensorBoardUnavailable(
                f"--tensorboard needs the tensorboard package ({error}); "
                "install it with: pip install 'adaptctl[tensorboard]'"
            ) from error
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def write(self, record: Mapping[str, Any]) -> None:
        """Add one iteration's record (a training log line) as scalars."""
        step = int(record["iteration"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def write_log_file(self, path: str | Path) -> int:
        """Add every record of a JSON-lines log (e.g. a run's iterations so far); returns the count."""
        count = 0
        for line in Path(path).read_text().splitlines():
            if line.strip():
                self.write(json.loads(line))
                count += 1
        return count

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
