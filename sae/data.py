"""Batch sources for the trainer: any 2-D array, or any stream of batches.

An array (numpy, torch, a zarr array, a memmap: anything with `.shape` and row slicing) is read in
consecutive batches by a thread a few batches ahead, so the step never waits on storage, and a resumed run
seeks straight to its data position. A stream (an iterable of tensors, or a callable returning a fresh
one per epoch) is consumed as given; resuming one skips the batches already trained on.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

BatchSource = Union[Any, Iterable[Tensor], Callable[[], Iterable[Tensor]]]


def is_array(source: Any) -> bool:
    """2-D and row-sliceable; a list of tensors is a stream, a tensor or an ndarray is an array."""
    shape = getattr(source, "shape", None)
    return shape is not None and len(shape) == 2 and hasattr(source, "__getitem__")


def _as_tensor(rows: Any) -> Tensor:
    if isinstance(rows, Tensor):
        return rows
    return torch.from_numpy(np.ascontiguousarray(rows))


class ArrayBatches:
    """Full batches of consecutive rows, in order; the ragged tail (< one batch) is dropped."""

    def __init__(self, array: Any, batch_size: int, prefetch: int = 4) -> None:
        if not is_array(array):
            raise TypeError(f"expected a 2-D array with row slicing, got {type(array).__name__}")
        self.array = array
        self.batch_size = int(batch_size)
        self.prefetch = max(1, int(prefetch))
        self.n_batches = int(array.shape[0]) // self.batch_size
        self.d_in = int(array.shape[1])

    def iter_from(self, start: int = 0) -> Iterator[Tensor]:
        """Batches start, start+1, ...; a reader thread stays `prefetch` batches ahead of the consumer."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        bs = self.batch_size

        def reader() -> None:
            try:
                for b in range(start, self.n_batches):
                    if stop.is_set():
                        return
                    q.put(_as_tensor(self.array[b * bs:(b + 1) * bs]))
                q.put(None)
            except BaseException as e:  # handed to the consumer, which raises it in its own thread
                q.put(e)

        thread = threading.Thread(target=reader, daemon=True, name="sae-batch-reader")
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a reader waiting on a full queue, then let it see `stop`
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)

    def __iter__(self) -> Iterator[Tensor]:
        return self.iter_from(0)


def check_source(batches: BatchSource, epochs: int) -> None:
    """For streams; arrays are wrapped in ArrayBatches before this is called."""
    if callable(batches) or isinstance(batches, ArrayBatches):
        return
    if not isinstance(batches, Iterable):
        raise TypeError("batches must be a 2-D array, an iterable of tensors, or a callable returning one")
    if epochs > 1 and iter(batches) is batches:
        raise ValueError(
            f"epochs={epochs} needs batches that can be iterated again: pass an array, a re-iterable or a "
            "callable returning a fresh iterator, not a one-shot iterator"
        )


def stream_from(batches: BatchSource, epochs: int, start_step: int) -> Iterator[tuple[int, Tensor]]:
    """(epoch, batch) for every batch of `epochs` passes, from global step `start_step` on (the data position
    of a resume)."""
    skip = start_step
    for epoch in range(epochs):
        if isinstance(batches, ArrayBatches):
            if skip >= batches.n_batches:
                skip -= batches.n_batches
                continue
            for batch in batches.iter_from(skip):
                yield epoch, batch
            skip = 0
            continue
        it = iter(batches() if callable(batches) else batches)
        for batch in it:
            if skip:
                skip -= 1
                continue
            yield epoch, batch
