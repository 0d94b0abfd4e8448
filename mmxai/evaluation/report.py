"""How a run tells the user what it does: progress bars, failure lines and notes.

The evaluator computes; what it has to say goes to a :class:`Reporter` the caller chooses:
:class:`ConsoleReporter` draws rich progress bars and prints to a console (``mmxai
compare`` in one process, and the parent of its workers), a worker's reporter sends the
same calls to its parent (:mod:`mmxai.commands.workers`), and the base class says nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console, enabled: bool = True) -> Progress:
    """A run's progress display: a bar per task, samples done, elapsed time, ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not enabled, transient=False)


def few(names: Sequence[str], shown: int = 3) -> str:
    """``a, b, c and 2 more``."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


class Reporter:
    """What a run says, as calls; this base reporter says nothing."""

    @contextmanager
    def progress(self, *descriptions: str, total: int) -> Iterator[None]:
        """One bar per description, each over ``total`` samples, while the block runs."""
        yield

    def sample_done(self, bar: int = 0) -> None:
        """One more sample of bar ``bar`` is done (computed now or found stored)."""

    def failed(self, error: str, where: Sequence[str]) -> None:
        """A sample's cells (``"method · metric"``) failed with ``error``."""

    def note(self, text: str) -> None:
        """Something worth knowing that is not a failure."""


class ConsoleReporter(Reporter):
    """Progress bars (unless ``bars`` is False) and one line per failure on ``console``
    (default: stderr)."""

    def __init__(self, console: Console | None = None, bars: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.bars = bars
        self._progress: Progress | None = None
        self._tasks: list[TaskID] = []

    @contextmanager
    def progress(self, *descriptions: str, total: int) -> Iterator[None]:
        with progress_bar(self.console, self.bars) as bar:
            self._progress = bar
            self._tasks = [bar.add_task(text, total=total) for text in descriptions]
            try:
                yield
            finally:
                self._progress, self._tasks = None, []

    def sample_done(self, bar: int = 0) -> None:
        if self._progress is not None:
            self._progress.advance(self._tasks[bar])

    def failed(self, error: str, where: Sequence[str]) -> None:
        self.console.print(f"[red]failed[/] {escape(error)} [dim]({escape(few(where))})[/dim]",
                           soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]{escape(text)}[/]", soft_wrap=True)
