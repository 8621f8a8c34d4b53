"""Progress bars for long work (synth, export), on stderr so stdout stays machine-readable."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

stderr_console = Console(stderr=True)


class _NullBar:
    def advance(self, n: float) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: float) -> None:
        self._progress.advance(self._task, n)

    def describe(self, text: str) -> None:
        self._progress.update(self._task, description=text)


@contextmanager
def byte_progress(description: str, total_bytes: int, enabled: bool = True) -> Iterator[_Bar | _NullBar]:
    """A bar counting bytes (with speed and ETA); a no-op when disabled."""
    if not enabled:
        yield _NullBar()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total_bytes))
