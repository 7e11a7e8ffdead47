"""Progress bars that exist only when shown.

tqdm builds a ``multiprocessing`` lock and may start a monitor thread for every bar, even a disabled one; the
lock fixes the process's start method (a later ``multiprocessing.set_start_method`` then fails). Library calls
that show no bar therefore get a stand-in that does nothing and touches no process-wide state.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    """What the code of a bar calls, doing nothing; iterates over its iterable."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool | None, **options: Any) -> Any:
    """A ``tqdm.auto`` bar over ``iterable`` (or to ``update`` by hand) when ``show`` is true, or is ``None`` and
    stderr is a terminal (tqdm's own ``disable=None`` rule); otherwise a stand-in with the same methods."""
    if not (show if show is not None else sys.stderr.isatty()):
        return _NoBar(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, **options)
