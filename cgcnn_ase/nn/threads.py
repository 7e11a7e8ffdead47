"""torch's CPU thread count, set for a block of code and restored after it.

Library code that needs a thread count of its own (training, a Dask partition, a forked worker) uses
:func:`torch_threads`, so the caller's process keeps the count it had.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Use ``threads`` torch CPU threads inside the block (``None``: leave the count), restoring the
    previous count after it; yields the count in use."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
