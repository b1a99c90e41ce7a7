"""Progress bars for long work: rich on stderr, and only when asked (the CLI asks on a terminal)."""

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(
    enabled: bool, description: str, total: int, unit: str = "rows", done: int = 0
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a bar with count, rate (``unit``/s) and ETA; a no-op when ``enabled`` is False.

    ``done`` starts the bar part-way (a resumed extraction).
    """
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", style="progress.data.speed"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, completed=done, rate="")

        def advance(n: int) -> None:
            speed = progress.tasks[0].speed
            progress.update(task, advance=n, rate="" if speed is None else f"{speed:,.0f} {unit}/s")

        yield advance
