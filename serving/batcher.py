"""An asyncio dynamic batcher with Triton's semantics.

* A batch goes as soon as it is full (``max_batch_size`` images) or its oldest request has
  waited ``max_queue_delay_ms`` (at most: the timer is set 1 ms early to absorb the event
  loop's millisecond rounding); while one batch runs, the next one fills.
* A request may carry several images; requests are never split, and they are taken in arrival
  order, so answers come back in request order.
* A full queue (``max_queue_size`` requests waiting) is refused at once with 503.
* A request still unanswered at its timeout is answered with 503; if it had not started it is
  also taken out of the queue.
* :meth:`DynamicBatcher.close` stops taking requests and runs everything already queued.

The batch itself runs in a worker thread (``run_batch(payloads) -> results``, one result per
payload), so the event loop keeps accepting and parsing requests meanwhile.

Example:
    >>> async def demo():
    ...     b = DynamicBatcher(lambda xs: [x * 2 for x in xs], max_batch_size=4, max_queue_delay_ms=1)
    ...     await b.start()
    ...     out = await asyncio.gather(*(b.submit(i, size=1) for i in range(5)))
    ...     await b.close()
    ...     return out
    >>> asyncio.run(demo())
    [0, 2, 4, 6, 8]
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import BadRequest, Unavailable

__all__ = ["DynamicBatcher"]

log = logging.getLogger(__name__)

#: How much earlier than the oldest request's deadline the batch timer is set (see ``_wait_for_batch``).
_TIMER_SLACK_S = 0.001


@dataclass
class _Item:
    payload: Any
    size: int
    future: asyncio.Future
    enqueued: float
    abandoned: bool = False


class DynamicBatcher:
    """Collects requests into batches for ``run_batch`` (see the module docstring).

    Args:
        run_batch: called in a worker thread with the payloads of one batch, in arrival order;
            returns one result per payload.
        max_batch_size: most images per batch (a request's ``size`` counts its images).
        max_queue_delay_ms: longest the oldest queued request waits for batch-mates.
        max_queue_size: most requests waiting; beyond it :meth:`submit` raises ``Unavailable``.
        timeout_ms: default time a request may take from submission to answer.
        on_batch: called with each batch's image count (for metrics).
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch_size: int,
                 max_queue_delay_ms: float, max_queue_size: int = 1024, timeout_ms: float = 10_000.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.timeout = timeout_ms / 1000.0
        self.on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purify-batch")
        self._closing = False

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return sum(not item.abandoned for item in self._queue)

    async def start(self) -> None:
        """Start the worker task on the running loop."""
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, payload: Any, *, size: int, timeout_ms: float | None = None) -> Any:
        """Queue one request of ``size`` images and wait for its result.

        Raises:
            BadRequest: ``size`` is over ``max_batch_size``.
            Unavailable: shutting down, the queue is full, or the timeout expired.
        """
        if self._worker is None or self._closing:
            raise Unavailable("the model is shutting down" if self._closing else "the model is not started")
        if size > self.max_batch_size:
            raise BadRequest(f"batch of {size} images is over max_batch_size {self.max_batch_size}; split it")
        if self.depth >= self.max_queue_size:
            raise Unavailable(f"queue full ({self.max_queue_size} requests waiting); retry later")
        loop = asyncio.get_running_loop()
        item = _Item(payload, size, loop.create_future(), time.monotonic())
        self._queue.append(item)
        self._wakeup.set()
        timeout = self.timeout if timeout_ms is None else min(self.timeout, timeout_ms / 1000.0)
        try:
            # shield: a timeout abandons the request but must not cancel a batch-mate's future.
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except asyncio.TimeoutError:
            item.abandoned = True
            raise Unavailable(f"request timed out after {timeout * 1000:.0f} ms") from None

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    def _queued_images(self) -> int:
        return sum(item.size for item in self._queue if not item.abandoned)

    def _drop_abandoned_head(self) -> None:
        while self._queue and self._queue[0].abandoned:
            self._queue.popleft()

    async def _run(self) -> None:
        while True:
            self._drop_abandoned_head()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_for_batch()
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _wait_for_batch(self) -> None:
        """Return when the queue holds a full batch, the oldest request's delay is over, or on close."""
        due = asyncio.Event()

        def expire() -> None:
            due.set()
            self._wakeup.set()

        # One timer for the oldest request's deadline; arrivals only re-check whether the batch is full.
        # The delay is a maximum, and asyncio's epoll wait rounds its timeout up to the next whole
        # millisecond, so the timer is set that much early: the batch leaves within the delay.
        remaining = self._queue[0].enqueued + self.delay - _TIMER_SLACK_S - time.monotonic()
        timer = asyncio.get_running_loop().call_later(max(0.0, remaining), expire)
        try:
            while not (self._closing or due.is_set() or self._queued_images() >= self.max_batch_size):
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            timer.cancel()

    def _take_batch(self) -> list[_Item]:
        batch, images = [], 0
        while self._queue:
            item = self._queue[0]
            if item.abandoned:
                self._queue.popleft()
                continue
            if images + item.size > self.max_batch_size:
                break
            batch.append(self._queue.popleft())
            images += item.size
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        if self.on_batch is not None:
            self.on_batch(sum(item.size for item in batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [item.payload for item in batch])
        except Exception as err:  # noqa: BLE001 - any failure is answered to every request of the batch
            log.exception("batch of %d requests failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
