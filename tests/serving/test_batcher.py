"""The dynamic batcher's Triton semantics, with a recording stand-in for the model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.batcher import DynamicBatcher
from serving.errors import BadRequest, Unavailable


class Recorder:
    """run_batch stand-in: records batch compositions, optionally sleeps, returns payload * 10."""

    def __init__(self, sleep: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.sleep, self.gate = sleep, gate

    def __call__(self, payloads):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.sleep)
        self.batches.append(list(payloads))
        return [p * 10 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("n, max_batch_size, delay_ms, min_s, max_s", [
    (4, 4, 5000, 0.0, 2.0),     # full: goes at once, far below the 5 s delay
    (3, 8, 100, 0.09, 2.0),     # partial: goes when the oldest has waited the delay
])
def test_batch_goes_when_full_or_after_the_delay(n, max_batch_size, delay_ms, min_s, max_s):
    rec = Recorder()

    async def go():
        b = DynamicBatcher(rec, max_batch_size=max_batch_size, max_queue_delay_ms=delay_ms)
        await b.start()
        t = time.monotonic()
        out = await asyncio.gather(*(b.submit(i, size=1) for i in range(n)))
        elapsed = time.monotonic() - t
        await b.close()
        return out, elapsed

    out, elapsed = run(go())
    assert out == [10 * i for i in range(n)] and rec.batches == [list(range(n))]
    assert min_s <= elapsed < max_s


def test_a_lone_request_waits_at_most_the_delay():
    """The delay is a maximum: the median wait of a lone request is within it, not a rounding past it."""
    waits = []

    def record(payloads):
        waits.append(time.monotonic() - payloads[0])
        return payloads

    async def go():
        b = DynamicBatcher(record, max_batch_size=8, max_queue_delay_ms=20)
        await b.start()
        for _ in range(25):
            await b.submit(time.monotonic(), size=1)
        await b.close()

    run(go())
    median_ms = sorted(waits)[len(waits) // 2] * 1000
    assert 15.0 <= median_ms <= 20.5, median_ms


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
    await asyncio.sleep(0.05)
    return b, first


def test_queue_full_answers_503_at_once_and_oversized_400():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def go():
        b, first = await _busy(rec, max_queue_size=2)
        queued = [asyncio.ensure_future(b.submit(i, size=1)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        t = time.monotonic()
        with pytest.raises(Unavailable, match="queue full"):
            await b.submit(3, size=1)
        refused_in = time.monotonic() - t
        with pytest.raises(BadRequest, match="over max_batch_size"):
            await b.submit(4, size=2)
        gate.set()
        out = await asyncio.gather(first, *queued)
        await b.close()
        return out, refused_in

    out, refused_in = run(go())
    assert out == [0, 10, 20] and refused_in < 0.5


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
