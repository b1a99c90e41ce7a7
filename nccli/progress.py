"""Progress bars for long work: rich on stderr, and only when asked (the CLI asks on a terminal)."""

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int, unit: str = "rows") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; a no-op when ``enabled`` is False."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
