"""The dynamic batcher's Triton semantics, with a recording stand-in for the model.

No wall-clock windows (tests/README.md): a batch that must go at once is given a delay it could
never outlast, waits are checked from below only (a loaded machine makes anything slower, never
faster), the timer's deadline is checked as the value the batcher asks the loop for, and ordering
waits on events, not on sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from serving import batcher as batcher_module
from serving.batcher import _TIMER_SLACK_S, DynamicBatcher
from serving.errors import BadRequest, Unavailable


class Recorder:
    """run_batch stand-in: records batch compositions and start times, optionally sleeps, returns payload * 10."""

    def __init__(self, sleep: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started_at: list[float] = []
        self.started = threading.Event()
        self.sleep, self.gate = sleep, gate

    def __call__(self, payloads):
        self.started_at.append(time.monotonic())
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.sleep)
        self.batches.append(list(payloads))
        return [p * 10 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _until(predicate) -> None:
    """Yield to the loop until ``predicate()`` holds (run's 30 s limit fails a test that never gets there)."""
    while not predicate():
        await asyncio.sleep(0.001)


#: A delay no test outlives (run() gives up after 30 s): a batch that comes back went because it was full.
_NEVER_MS = 3_600_000


def test_a_full_batch_goes_without_waiting_for_the_delay():
    rec = Recorder()

    async def go():
        b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=_NEVER_MS)
        await b.start()
        out = await asyncio.gather(*(b.submit(i, size=1) for i in range(4)))
        await b.close()
        return out

    assert run(go()) == [0, 10, 20, 30] and rec.batches == [[0, 1, 2, 3]]


def test_a_partial_batch_goes_after_the_delay():
    # Lower bound only: the batcher arms its timer _TIMER_SLACK_S early and a loop timer never fires
    # before its time, so the batch starts at least delay - slack after the first submit.
    rec = Recorder()
    delay_ms = 100

    async def go():
        b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=delay_ms)
        await b.start()
        submitted = time.monotonic()
        out = await asyncio.gather(*(b.submit(i, size=1) for i in range(3)))
        await b.close()
        return out, submitted

    out, submitted = run(go())
    assert out == [0, 10, 20] and rec.batches == [[0, 1, 2]]
    assert rec.started_at[0] - submitted >= delay_ms / 1000 - _TIMER_SLACK_S


def test_the_delay_is_a_maximum(monkeypatch):
    """The batch timer is armed early enough that the loop's millisecond rounding keeps it within the delay.

    asyncio's epoll wait rounds a timeout up to the next whole millisecond, so a timer asked for at
    the deadline fires up to 1 ms past it. With the batcher's clock frozen, the timer it asks the
    loop for is exactly what it computes from a request's enqueue time.
    """
    monkeypatch.setattr(batcher_module, "time", SimpleNamespace(monotonic=lambda: 0.0))
    asked: list[float] = []

    async def go():
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def recording(delay, callback, *args, **kwargs):
            if getattr(callback, "__name__", "") == "expire":       # the batch timer, not wait_for's
                asked.append(delay)
            return call_later(delay, callback, *args, **kwargs)

        loop.call_later = recording
        b = DynamicBatcher(lambda xs: xs, max_batch_size=8, max_queue_delay_ms=20)
        await b.start()
        for i in range(3):
            assert await b.submit(i, size=1) == i
        await b.close()

    run(go())
    assert len(asked) == 3
    assert all(0.0 < a <= 0.020 - 0.001 for a in asked), asked


def test_multi_image_requests_are_never_split_and_order_is_kept():
    rec = Recorder(sleep=0.05)

    async def go():
        b = DynamicBatcher(rec, max_batch_size=5, max_queue_delay_ms=20)
        await b.start()
        sizes = [2, 2, 2, 1, 3, 5]
        out = await asyncio.gather(*(b.submit(i, size=s) for i, s in enumerate(sizes)))
        await b.close()
        return out, sizes

    out, sizes = run(go())
    assert out == [i * 10 for i in range(6)]
    flat = [p for batch in rec.batches for p in batch]
    assert flat == list(range(6))                         # arrival order across batches
    assert all(sum(sizes[p] for p in batch) <= 5 for batch in rec.batches)


async def _busy(rec: Recorder, **settings) -> tuple[DynamicBatcher, asyncio.Future]:
    """A one-image batcher whose first request (payload 0) is running, held by ``rec``'s gate."""
    b = DynamicBatcher(rec, max_batch_size=1, max_queue_delay_ms=0, **settings)
    await b.start()
    first = asyncio.ensure_future(b.submit(0, size=1))
    await _until(rec.started.is_set)
    return b, first


def test_queue_full_answers_503_at_once_and_oversized_400():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go():
        b, first = await _busy(rec, max_queue_size=2)
        queued = [asyncio.ensure_future(b.submit(i, size=1)) for i in (1, 2)]
        await _until(lambda: b.depth == 2)
        # "at once": the refusal is raised on the coroutine's first step, before it awaits anything
        for payload, size, error, match in ((3, 1, Unavailable, "queue full"), (4, 2, BadRequest, "over max_batch_size")):
            step = b.submit(payload, size=size)
            with pytest.raises(error, match=match):
                step.send(None)
        gate.set()
        out = await asyncio.gather(first, *queued)
        await b.close()
        return out

    assert run(go()) == [0, 10, 20]


def test_timeout_is_answered_and_the_request_dropped_from_the_queue():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go():
        b, first = await _busy(rec, timeout_ms=10_000)
        with pytest.raises(Unavailable, match="timed out after 100 ms"):
            await b.submit(1, size=1, timeout_ms=100)
        assert b.depth == 0
        gate.set()
        assert await first == 0
        assert await b.submit(2, size=1) == 20
        await b.close()

    run(go())
    assert [1] not in rec.batches


def test_close_drains_the_queue_and_refuses_new_requests():
    rec = Recorder(sleep=0.02)

    async def go():
        b = DynamicBatcher(rec, max_batch_size=2, max_queue_delay_ms=1000)
        await b.start()
        pending = [asyncio.ensure_future(b.submit(i, size=1)) for i in range(5)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="shutting down"):
            await b.submit(9, size=1)
        await closing
        return await asyncio.gather(*pending)

    assert run(go()) == [0, 10, 20, 30, 40]


def test_a_failing_batch_answers_every_request_with_the_error():
    def boom(payloads):
        raise RuntimeError("model exploded")

    async def go():
        b = DynamicBatcher(boom, max_batch_size=4, max_queue_delay_ms=10)
        await b.start()
        results = await asyncio.gather(*(b.submit(i, size=1) for i in range(3)), return_exceptions=True)
        await b.close()
        return results

    assert all(isinstance(r, RuntimeError) for r in run(go()))
