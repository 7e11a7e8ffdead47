"""Warning blocks that threads can share.

The library quiets or records warnings around some calls: ASE's and pymatgen's chatter while reading, and a
prediction's own warnings, gathered to be reissued once with a better message. :class:`warnings.catch_warnings`
does this by saving the process-wide filter list (and ``showwarning``) on entry and restoring it on exit. Before
Python 3.14's context-aware warnings, two threads whose blocks overlap restore each other's state (round 29a: a
predictor shared by a thread pool left an ``"ignore"`` filter for every warning in the process, and one
calculator's warnings were recorded by another thread's block, so a ``GeometryWarning`` turned into an error by
the user's filter never raised). :func:`catch_warnings` runs such blocks one at a time across the process's
threads; where warnings are context-aware, it is :class:`warnings.catch_warnings` itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator

__all__ = ["catch_warnings"]

#: Held while a block of :func:`catch_warnings` runs (re-entrant: blocks nest within a thread).
_BLOCKS = threading.RLock()


def _new_lock_in_child() -> None:
    """A forked child starts with a free lock: one that another thread of the parent held at the fork would
    otherwise stay held in the child, where that thread does not exist (as :mod:`logging` does for its locks)."""
    global _BLOCKS
    _BLOCKS = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


@contextlib.contextmanager
def catch_warnings(*, record: bool = False) -> Iterator[list[warnings.WarningMessage] | None]:
    """:class:`warnings.catch_warnings` (``record``: the list of warnings raised in the block), one block at a time
    across threads unless the interpreter's warnings are context-aware (Python 3.14's
    ``sys.flags.context_aware_warnings``). Another thread that enters a block waits until this one ends."""
    if getattr(sys.flags, "context_aware_warnings", False):
        with warnings.catch_warnings(record=record) as caught:
            yield caught
        return
    with _BLOCKS, warnings.catch_warnings(record=record) as caught:
        yield caught
