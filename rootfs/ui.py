"""Progress output on stderr: rich bars on a terminal, a few plain lines otherwise."""
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Ui:
    def __init__(self, console: Console | None = None) -> None:
        # stderr, so that stdout stays clean for the path a command prints.
        self.console = console if console is not None else Console(stderr=True)
        # Logs and CI get plain lines without bars or colour.
        self.fancy = self.console.is_terminal

    def step(self, text: str) -> None:
        """One line per stage of a build."""
        if self.fancy:
            self.console.print(f"[bold cyan]>[/] {escape(text)}", highlight=False)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def bar(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Yield advance(nbytes); draws a transient download bar on a terminal only."""
        if not self.fancy:
            yield lambda n: None
            return
        columns = (
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(escape(label), total=total)
            yield lambda n: progress.advance(task, n)
