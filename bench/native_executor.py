"""Experiment (``--agent-executor native``): an engine executor with a real queue, swapped into
the agent at start-up by the bench's launcher, to measure what docs/performance.md finding 2
would buy. Not product code and not imported by the product.

gevent's ThreadPool admits ``maxsize`` tasks and frees a slot only when the hub has run the
task's completion, so engine threads idle for a hub turn between tasks. Here: N native threads
take work from an unbounded native queue (``_queue.SimpleQueue``, which gevent does not patch),
finished work goes into a deque, and one libev async watcher wakes the hub once for a whole
batch of completions.
"""

from __future__ import annotations

import _queue
import collections
from collections.abc import Callable
from typing import Any

from gevent import get_hub, monkey
from gevent.event import AsyncResult

Outcome = tuple["AsyncResult[Any]", bool, Any]


class NativeExecutor:
    def __init__(self, threads: int) -> None:
        self._tasks: Any = _queue.SimpleQueue()
        self._done: collections.deque[Outcome] = collections.deque()
        self._wakeup = get_hub().loop.async_()
        self._wakeup.start(self._deliver)
        start_new_thread = monkey.get_original("_thread", "start_new_thread")
        for _ in range(threads):
            start_new_thread(self._work, ())

    def _work(self) -> None:
        # a native thread: blocks in the C queue with the GIL released
        while True:
            fn, result = self._tasks.get()
            try:
                outcome: Outcome = (result, True, fn())
            except BaseException as exc:  # handed to the caller, like ThreadPool.apply
                outcome = (result, False, exc)
            self._done.append(outcome)
            self._wakeup.send()  # libev async watchers are the thread-safe way in

    def _deliver(self) -> None:
        # in the hub: one wakeup may carry many completions
        while self._done:
            result, ok, value = self._done.popleft()
            if ok:
                result.set(value)
            else:
                result.set_exception(value)

    def apply(self, fn: Callable[[], Any]) -> Any:
        result: AsyncResult[Any] = AsyncResult()
        self._tasks.put((fn, result))
        return result.get()


def install() -> None:
    """Replace ``coraza_spoa_py.runtime._executor`` before the CLI runs (after patching)."""
    from coraza_spoa_py import runtime

    def executor(pool: Any) -> Callable[[Callable[[], Any]], Any]:
        return NativeExecutor(int(pool.maxsize)).apply

    runtime._executor = executor
