"""engine_pool.EnginePool with the real native engine threads: a job parks only its greenlet
(the hub keeps running), responses overtake queued requests, a job that waits past its deadline
is shed without running, closes run detached, the threads stop on close, and a transaction's
later jobs go to the thread that ran its first (unless that thread is busy or gone)."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from coraza_spoa_py import engine as waf
from coraza_spoa_py.engine.binding import ffi, lib
from coraza_spoa_py.engine.engine_pool import EnginePool
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    RequestInfo,
    ResponseInfo,
    Verdict,
)
from coraza_spoa_py.settings import AppConfig, RulePaths
from tests.support.fifo_gate import release_fifo_gate

pytestmark = pytest.mark.integration

RULES_DIR = Path(__file__).resolve().parent.parent / "data" / "rules"


def gated_engine(pool: EnginePool) -> waf.ModSecEngine:
    # a request with ARGS:fifo blocks inside its engine job until "go" arrives (the script of
    # test_waf_threads), its response with ARGS:fifo3 likewise; ARGS:evil is denied,
    # RESPONSE_STATUS 299 is denied in phase 3
    directives = (
        "SecRuleEngine On\n"
        f'SecRule ARGS:fifo "@inspectFile {RULES_DIR / "wait_for_fifo.sh"}" '
        "\"id:30001,phase:1,t:none,pass,log,msg:'released'\"\n"
        'SecRule ARGS "@contains evil" "id:30002,phase:2,deny,status:403,log"\n'
        'SecRule RESPONSE_STATUS "@streq 299" "id:30003,phase:3,deny,status:403,log"\n'
        f'SecRule ARGS:fifo3 "@inspectFile {RULES_DIR / "wait_for_fifo.sh"}" '
        "\"id:30004,phase:3,t:none,pass,log,msg:'released in phase 3'\"\n"
    )
    return waf.load_engine(AppConfig(name="pool", directives=directives), RulePaths(), pool)


@pytest.fixture
def one_thread() -> Iterator[EnginePool]:
    pool = EnginePool(1)
    yield pool
    pool.close()


def release(fifo: Path) -> None:
    release_fifo_gate(fifo, sleep=gevent.sleep)


def start_gated_request(
    engine: waf.ModSecEngine, tmp_path: Path, transaction_id: str
) -> tuple[waf.ModSecTransaction, gevent.Greenlet[Any, Verdict], Path]:
    """A greenlet whose request job blocks in the gated rule until ``release(fifo)``."""
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    tx = engine.new_transaction(transaction_id)
    request = RequestInfo(transaction_id, query=b"fifo=" + bytes(fifo))
    return tx, gevent.spawn(tx.process_request, request), fifo


def test_a_running_job_parks_its_greenlet_not_the_hub(one_thread: EnginePool, tmp_path: Path):
    """1. A request's engine job blocks in the gated rule. 2. Meanwhile another greenlet counts
    hub turns, then releases the gate. Result: the hub ran during the job (the count moved and
    the release happened on the hub), and the verdict shows the rule ran."""
    tx, job, fifo = start_gated_request(gated_engine(one_thread), tmp_path, "gate")
    turns = 0
    while one_thread.waiting or not job.dead:
        turns += 1
        if turns == 5:
            release(fifo)
        gevent.sleep(0.001)
        if turns > 20_000:
            break
    verdict: Verdict = job.get(timeout=30)
    tx.close()
    assert turns >= 5
    assert verdict.matched_rule_ids == (30001,)


def test_responses_overtake_queued_requests(one_thread: EnginePool, tmp_path: Path):
    """1. One engine thread, blocked by a gated request. 2. Queue two requests, then one
    response. 3. Release. Result: the response's job started before both requests', and each
    caller got its own verdict (the evil request denied, the 299 response denied)."""
    engine = gated_engine(one_thread)
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    answered = engine.new_transaction("answered")
    assert not answered.process_request(RequestInfo("answered")).interrupted
    started: dict[str, float] = {}

    def request(name: str, query: bytes) -> Verdict:
        tx = engine.new_transaction(name)
        try:
            return tx.process_request(RequestInfo(name, query=query))
        finally:
            started[name] = time.monotonic()
            tx.close()

    def response() -> Verdict:
        try:
            return answered.process_response(ResponseInfo("answered", status=299))
        finally:
            started["response"] = time.monotonic()

    blocker = gevent.spawn(request, "blocker", b"fifo=" + bytes(fifo))
    gevent.sleep(0.05)  # the thread took the blocker
    queued: list[gevent.Greenlet[..., Verdict]] = [
        gevent.spawn(request, "req1", b"a=evil"),
        gevent.spawn(request, "req2", b"a=1"),
    ]
    queued.append(gevent.spawn(response))
    gevent.sleep(0.05)
    assert one_thread.waiting == 3
    release(fifo)
    results = [g.get(timeout=30) for g in [blocker, *queued]]
    answered.close()
    # greenlets resume in completion order: the response's job finished first
    assert started["response"] < started["req1"] < started["req2"]
    assert [r.interrupted for r in results] == [False, True, False, True]
    assert results[3].rule_id == 30003


def test_a_job_past_its_deadline_is_shed_without_running(one_thread: EnginePool, tmp_path: Path):
    """1. Block the only thread. 2. Queue a request whose deadline passes while it waits.
    Result: DeadlineExceededError, and its rules never ran (the evil argument not judged); the
    transaction can still be closed; the pool's wait estimate saw a wait past the budget."""
    engine = gated_engine(one_thread)
    blocker_tx, blocker, fifo = start_gated_request(engine, tmp_path, "blocker")
    gevent.sleep(0.05)
    late_tx = engine.new_transaction("late")
    late = gevent.spawn(
        late_tx.process_request,
        RequestInfo("late", query=b"a=evil"),
        deadline=time.monotonic() + 0.1,
    )
    gevent.sleep(0.3)
    release(fifo)
    blocker.get(timeout=30)
    with pytest.raises(DeadlineExceededError):
        late.get(timeout=30)
    late_tx.close()
    blocker_tx.close()
    one_thread.close()  # runs the detached closes and delivers them
    assert one_thread.expected_wait_s() == 0.0  # nothing waits any more
    assert late_tx._matches == []


def test_close_is_detached_and_frees_after_the_job(tmp_path: Path):
    """1. Two threads; 50 transactions judged and closed. 2. Close the pool. Result: every
    close ran (the engine logged nothing, nothing left parked) and the threads are gone."""
    pool = EnginePool(2)
    engine = gated_engine(pool)
    for index in range(50):
        tx = engine.new_transaction(f"t{index}")
        verdict = tx.process_request(RequestInfo(f"t{index}", query=b"a=evil" * (index % 2)))
        assert verdict.interrupted == bool(index % 2)
        tx.close()
        tx.close()  # idempotent
    pool.close()
    # the hub may be inside a delivery batch: it switched to this greenlet for the last request
    # (EnginePool._deliver) and finishes the batch, the close that finished beside that request
    # among it, when this greenlet next yields
    gevent.sleep(0)
    assert pool._parked == {}
    assert pool.waiting == 0


def test_a_killed_caller_leaves_its_job_and_buffers_alive_until_the_job_ran(
    one_thread: EnginePool, tmp_path: Path
):
    """1. A request's job blocks in the gated rule; its greenlet is killed (a forced shutdown)
    and every other reference to the transaction dropped. Result: the pool still holds the
    transaction (the job points into its buffers). 2. Release the gate. Result: the job ran,
    the pool let go, and the transaction was freed (closed by its finaliser)."""
    tx, caller, fifo = start_gated_request(gated_engine(one_thread), tmp_path, "killed")
    gevent.sleep(0.05)
    caller.kill()
    alive = weakref.ref(tx)
    del tx, caller  # the greenlet object holds its function, a bound method of tx
    gc.collect()
    assert alive() is not None
    assert len(one_thread._parked) == 1
    release(fifo)
    deadline = time.monotonic() + 30
    while one_thread._parked and time.monotonic() < deadline:
        gevent.sleep(0.01)
    gc.collect()
    assert one_thread._parked == {}
    assert alive() is None


def test_closing_a_transaction_whose_job_runs_is_refused_not_waited_for(
    one_thread: EnginePool, tmp_path: Path
):
    """1. A request's job blocks in the gated rule (its greenlet holds the transaction). 2. The
    hub's main greenlet closes the transaction. Result: EngineError at once (a wait would block
    the hub for good); once the job ran, close() works and the verdict is intact."""
    tx, caller, fifo = start_gated_request(gated_engine(one_thread), tmp_path, "busy")
    gevent.sleep(0.05)
    with pytest.raises(waf.EngineError, match="busy"):
        tx.close()
    release(fifo)
    assert caller.get(timeout=30).matched_rule_ids == (30001,)
    tx.close()


def _batch_threads() -> set[int]:
    """The ids of this process's SCHED_BATCH threads."""
    batch = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.sched_getscheduler(int(tid)) == os.SCHED_BATCH:
                batch.add(int(tid))
        except OSError:  # a thread that ended meanwhile
            continue
    return batch


def _wait_for(condition: Callable[[], bool], what: Callable[[], object]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.01)


def test_engine_threads_run_as_batch_work_and_do_not_preempt_the_hub():
    """1. Start a pool of 3 engine threads. Result: exactly 3 new threads of this process are
    SCHED_BATCH (CPU-bound work: a thread woken for a job does not preempt the hub, which
    submitted it and has more to do; docs/performance.md change 15). 2. Close the pool.
    Result: they are gone. Thread ids, not counts: an earlier test's pool threads are detached
    and may still be ending while this one starts."""
    before = _batch_threads()
    pool = EnginePool(3)
    try:
        _wait_for(lambda: len(_batch_threads() - before) >= 3, _batch_threads)
        time.sleep(0.05)  # a fourth would show by now
        assert len(_batch_threads() - before) == 3, (before, _batch_threads())
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the hub's thread is untouched
        ours = _batch_threads() - before
    finally:
        pool.close()
    _wait_for(lambda: not (_batch_threads() & ours), _batch_threads)


def test_jobs_queued_in_one_loop_turn_wake_the_threads_once():
    """1. Ten greenlets start a request each in the same loop turn (every other one an
    attack). Result: all ten are judged right, and the engine threads were woken once for
    the ten jobs, not once per job (a wake costs the hub ~20 us of CPU: docs/performance.md
    change 16). 2. One more request later. Result: one more wake."""
    pool = EnginePool(2)
    wakes = []
    wake = pool._native.wake

    def counted_wake() -> None:
        wakes.append(1)
        wake()

    pool._native.wake = counted_wake  # type: ignore[method-assign]
    engine = gated_engine(pool)

    def judge(index: int) -> bool:
        tx = engine.new_transaction(f"w{index}")
        request = RequestInfo(f"w{index}", query=b"a=evil" if index % 2 else b"a=1")
        return tx.process_request(request, close_when=CloseWhen.ALWAYS).interrupted

    try:
        greenlets = [gevent.spawn(judge, index) for index in range(10)]
        gevent.joinall(greenlets, raise_error=True)
        assert [g.value for g in greenlets] == [bool(index % 2) for index in range(10)]
        assert len(wakes) == 1
        assert gevent.spawn(judge, 11).get(timeout=30) is True
        assert len(wakes) == 2
    finally:
        pool.close()


def test_close_from_a_greenlet_still_hands_each_waiter_its_job():
    """1. A request's greenlet has queued its job and waits. 2. The main greenlet (not the
    hub) closes the pool, which runs the job and delivers it. Result: the waiting greenlet
    is resumed through the hub (only the hub may switch to a waiter) with its verdict."""
    pool = EnginePool(1)
    engine = gated_engine(pool)
    tx = engine.new_transaction("late")
    caller = gevent.spawn(tx.process_request, RequestInfo("late", query=b"a=evil"))
    gevent.sleep(0)  # the caller queues its job and waits; the wake callback has not run
    assert len(pool._parked) == 1
    pool.close()
    assert caller.get(timeout=30).matched_rule_ids == (30002,)
    assert pool._parked == {}


def _recording_detach(pool: EnginePool) -> list[Any]:
    """The jobs ``pool`` runs detached (closes), recorded as they are submitted."""
    detached: list[Any] = []
    detach = pool.detach

    def recorded(job: Any, *, keep: object) -> None:
        detached.append(job)
        detach(job, keep=keep)

    pool.detach = recorded  # type: ignore[method-assign]
    return detached


def _settle(pool: EnginePool) -> None:
    """Until every job submitted has been delivered (closes included)."""
    deadline = time.monotonic() + 30
    while pool._parked:
        assert time.monotonic() < deadline, pool._parked
        gevent.sleep(0.001)


def test_a_transactions_jobs_run_on_the_thread_that_ran_its_first():
    """1. Three engine threads; 30 transactions one after the other, each a request, a response
    and a close, the threads left to go idle before each job. Result: each transaction's
    response and close ran on the thread that ran its request (its engine memory is on that
    thread's malloc arena: docs/performance.md change 40). A loaded box may keep the thread
    off its CPU past the steal delay, when another may take the job: allowed only after that
    delay, and for a few jobs at most."""
    pool = EnginePool(3)
    detached = _recording_detach(pool)
    engine = gated_engine(pool)
    jobs = []
    try:
        for index in range(30):
            name = f"a{index}"
            tx = engine.new_transaction(name)
            request = tx.process_request(RequestInfo(name, query=b"a=1"))
            first = tx._last_job
            gevent.sleep(0.002)  # the thread waits for work again
            response = tx.process_response(ResponseInfo(name, status=299))
            jobs.append((first, tx._last_job))
            gevent.sleep(0.002)
            tx.close()
            _settle(pool)
            jobs.append((first, detached[-1]))
            assert not request.interrupted and response.rule_id == 30003
            assert 1 <= first.ran_on <= 3
    finally:
        pool.close()
    elsewhere = [job for first, job in jobs if job.ran_on != first.ran_on]
    assert all(job.started_at - job.pushed_at >= 0.0019 for job in elsewhere)
    assert len(elsewhere) <= 6, [(first.ran_on, job.ran_on) for first, job in jobs]


def test_a_job_whose_thread_stays_busy_is_taken_by_another_after_the_steal_delay(
    tmp_path: Path,
):
    """1. Two engine threads. Transaction A's request runs on a thread T; transaction B's
    request is repeated until one runs on T too. 2. B's response blocks T in a gated phase-3
    rule. 3. A's response is queued: it prefers T. Result: the other thread took it, not before
    it had waited the steal delay (2 ms, docs/performance.md change 40) and long before the
    gate opened; both verdicts are right once the gate is released."""
    pool = EnginePool(2)
    engine = gated_engine(pool)
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    try:
        first = engine.new_transaction("A")
        first.process_request(RequestInfo("A"))
        thread = first._last_job.ran_on
        for attempt in range(200):
            blocker = engine.new_transaction(f"B{attempt}")
            blocker.process_request(RequestInfo(f"B{attempt}", query=b"fifo3=" + bytes(fifo)))
            if blocker._last_job.ran_on == thread:
                break
            blocker.close()
        else:
            pytest.fail("no request ran on the first one's thread in 200 tries")
        blocked = gevent.spawn(blocker.process_response, ResponseInfo("B", status=200))
        gevent.sleep(0)  # it queues its job
        gated = blocker._last_job
        assert gated.kind == lib.CS_RESPONSE
        while gated.started_at == 0:  # until the gated job runs on the thread
            gevent.sleep(0.001)
        assert gated.ran_on == thread
        verdict = first.process_response(ResponseInfo("A", status=299))
        stolen = first._last_job
        assert verdict.rule_id == 30003
        assert stolen.ran_on not in (0, thread)
        assert stolen.started_at - stolen.pushed_at >= 0.0019
        assert not blocked.ready()  # the gate was still shut: the thread was busy throughout
        release(fifo)
        assert blocked.get(timeout=30).matched_rule_ids == (30004,)
        first.close()
        blocker.close()
    finally:
        pool.close()


def test_jobs_that_prefer_retired_threads_all_run():
    """1. Four engine threads; 40 transactions' requests at once (spread over the threads).
    2. Their responses are queued, and in the same loop turn, before any thread is woken, the
    pool shrinks to one thread: jobs wait in the lanes of threads that retire. Result: every
    response is answered right, on the one thread left, and the closes all ran. 3. Grow to
    three again and repeat with new transactions. Result: the same; nothing stays parked."""
    pool = EnginePool(4)
    engine = gated_engine(pool)

    def judge(name: str) -> tuple[waf.ModSecTransaction, Verdict]:
        tx = engine.new_transaction(name)
        return tx, tx.process_request(RequestInfo(name))

    def answer(tx: waf.ModSecTransaction, status: int) -> Verdict:
        try:
            return tx.process_response(ResponseInfo(tx.transaction_id, status=status))
        finally:
            tx.close()

    try:
        for round_, (before, after) in enumerate([(4, 1), (1, 3)]):
            if round_:
                pool.resize(before)
            started = [gevent.spawn(judge, f"r{round_}-{index}") for index in range(40)]
            gevent.joinall(started, raise_error=True)
            transactions = [g.get()[0] for g in started]
            ran = {tx._last_job.ran_on for tx in transactions}
            assert len(ran) <= before and 0 not in ran  # an index a thread ran with
            statuses = [299 if index % 2 else 200 for index in range(40)]
            answers = [
                gevent.spawn(answer, tx, status)
                for tx, status in zip(transactions, statuses, strict=True)
            ]
            gevent.spawn(pool.resize, after)  # runs before the pool's wake callback
            gevent.joinall(answers, raise_error=True)
            assert [a.get().interrupted for a in answers] == [s == 299 for s in statuses]
            assert pool.threads == after
            _settle(pool)
            assert pool.waiting == 0
    finally:
        pool.close()
    assert pool._parked == {}


def _counting_writes(pool: EnginePool) -> list[int]:
    """The threads' writes to ``pool``'s eventfd, one entry per take of the finished jobs:
    the counter read (and so drained) just before the take does."""
    writes: list[int] = []
    take_done = pool._native.take_done

    def counted() -> list[Any]:
        # nothing to read: a take without a write (the hub's timer, or close())
        with contextlib.suppress(BlockingIOError):
            writes.append(int.from_bytes(os.read(pool._native.fd, 8), sys.byteorder))
        return take_done()

    pool._native.take_done = counted  # type: ignore[method-assign]
    return writes


def test_jobs_finished_while_another_runs_wait_for_a_batch(tmp_path: Path):
    """1. Two engine threads, batches of 16 and no time limit (the delay, and so the hub's
    timer, beyond the test); one thread blocked in a gated request. 2. Fifteen requests run on
    the other thread. Result: none is delivered while the gated one still runs (a job running
    means more completions to come: no eventfd write, no hub wake, for fewer than 16). 3.
    Release the gate. Result: all sixteen verdicts, brought by one write of the eventfd, not
    one per job (docs/performance.md change 41)."""
    pool = EnginePool(2)
    pool.set_batching(16, 600.0)
    writes = _counting_writes(pool)
    engine = gated_engine(pool)

    def judge(index: int) -> bool:
        tx = engine.new_transaction(f"b{index}")
        request = RequestInfo(f"b{index}", query=b"a=evil" if index % 3 == 0 else b"a=1")
        return tx.process_request(request, close_when=CloseWhen.ALWAYS).interrupted

    try:
        blocker_tx, blocker, fifo = start_gated_request(engine, tmp_path, "long")
        gevent.sleep(0.05)  # the thread took it
        short = [gevent.spawn(judge, index) for index in range(15)]
        _wait_for(lambda: pool.waiting == 0, lambda: pool.waiting)
        gevent.sleep(0.1)  # the last one taken has finished
        assert not any(g.ready() for g in short)
        assert writes == []
        release(fifo)
        gevent.joinall(short, raise_error=True)
        assert [g.get() for g in short] == [index % 3 == 0 for index in range(15)]
        assert blocker.get(timeout=30).matched_rule_ids == (30001,)
        assert sum(writes) == 1, writes
        blocker_tx.close()
    finally:
        pool.close()


def test_the_last_job_running_is_delivered_at_once_without_any_timer():
    """1. Two engine threads, batches of 16, the delay (and so the hub's timer) beyond the
    test. 2. Five transactions one after the other, then five at once. Result: each answered
    well within the test's timeout: a job that finishes when no other runs or waits is
    delivered at once, never held for a batch (docs/performance.md change 41)."""
    pool = EnginePool(2)
    pool.set_batching(16, 600.0)
    engine = gated_engine(pool)

    def judge(name: str) -> Verdict:
        tx = engine.new_transaction(name)
        return tx.process_request(RequestInfo(name, query=b"a=evil"), close_when=CloseWhen.ALWAYS)

    try:
        with gevent.Timeout(20):
            for index in range(5):
                assert judge(f"alone{index}").rule_id == 30002
            together = [gevent.spawn(judge, f"together{index}") for index in range(5)]
            gevent.joinall(together, raise_error=True)
        assert [g.get().rule_id for g in together] == [30002] * 5
    finally:
        pool.close()


def test_a_job_finished_beside_a_long_one_is_not_held_back_for_it(tmp_path: Path):
    """1. Two engine threads with the default batching; one blocked in a gated request. 2. A
    request runs on the other thread and finishes while the first still runs (so its thread
    holds it back for a batch). Result: its caller gets its verdict while the gate is still
    shut (the hub's timer takes it: docs/performance.md change 41). 3. Release the gate.
    Result: the first verdict arrives too."""
    pool = EnginePool(2)
    engine = gated_engine(pool)
    try:
        blocker_tx, blocker, fifo = start_gated_request(engine, tmp_path, "long")
        gevent.sleep(0.05)  # the thread took it
        tx = engine.new_transaction("short")
        with gevent.Timeout(10):
            verdict = tx.process_request(RequestInfo("short", query=b"a=evil"))
        assert verdict.rule_id == 30002
        assert not blocker.ready()
        release(fifo)
        assert blocker.get(timeout=30).matched_rule_ids == (30001,)
        tx.close()
        blocker_tx.close()
    finally:
        pool.close()


def _handed_back(pool: EnginePool) -> tuple[int, int]:
    """Blocks handed back to the engine threads: (not freed yet, ever)."""
    return pool._native.handed_back()


def _blocked(engine: waf.ModSecEngine, name: str) -> Verdict:
    tx = engine.new_transaction(name)
    verdict = tx.process_request(RequestInfo(name, query=b"a=evil"), close_when=CloseWhen.ALWAYS)
    assert verdict.rule_id == 30002
    assert tx._log.buf == ffi.NULL  # the caller keeps nothing of it
    return verdict


def test_what_a_blocked_request_leaves_is_freed_by_its_thread_before_its_next_job(
    one_thread: EnginePool,
):
    """1. One engine thread; a request denied by a rule, its job closing the transaction.
    Result: the verdict is whole (the rule's message and the intervention's text read), and
    the two blocks the job left, the intervention's log string and the closed transaction's
    log buffer, were handed back to the thread (no url: a deny has none), not freed yet.
    2. Another transaction's request. Result: the thread freed them before running it
    (docs/performance.md change 44), and nothing more was handed back."""
    engine = gated_engine(one_thread)
    verdict = _blocked(engine, "denied")
    assert verdict.matched_rule_ids == (30002,)
    assert verdict.status == 403
    assert _handed_back(one_thread) == (2, 2)
    tx = engine.new_transaction("next")
    assert not tx.process_request(RequestInfo("next")).interrupted
    after = _handed_back(one_thread)
    tx.close()
    assert after == (0, 2)


def test_blocks_handed_back_to_a_retired_thread_are_freed_all_the_same():
    """1. Two engine threads; 40 requests denied at once (each thread ran some, the last ones'
    blocks wait for their thread's next job). 2. The pool shrinks to one thread, which then
    runs one more request. Result: every block is freed (the retiring thread frees its own on
    its way out, the other before its job), and the count of blocks handed back is two per
    denied request. 3. A denied request whose job is delivered, then the pool closes before
    its caller reads it. Result: the verdict is whole and nothing waits to be freed (the
    thread is gone: the caller freed the two blocks itself)."""
    pool = EnginePool(2)
    engine = gated_engine(pool)
    try:
        denied = [gevent.spawn(_blocked, engine, f"d{index}") for index in range(40)]
        gevent.joinall(denied, raise_error=True)
        pending, total = _handed_back(pool)
        assert pending > 0 and total == 80
        pool.resize(1)
        tx = engine.new_transaction("after")
        assert not tx.process_request(RequestInfo("after")).interrupted
        tx.close()
        _settle(pool)
        _wait_for(lambda: _handed_back(pool) == (0, 80), lambda: _handed_back(pool))
        run = pool.run

        def run_then_close(job: Any, *, urgent: bool, keep: object) -> None:
            run(job, urgent=urgent, keep=keep)
            assert job.ran_by != ffi.NULL and job.out.log != ffi.NULL
            pool.close()

        pool.run = run_then_close  # type: ignore[method-assign]
        assert _blocked(engine, "late").matched_rule_ids == (30002,)
    finally:
        pool.close()
    assert _handed_back(pool) == (0, 82)


def test_nothing_handed_back_outlives_the_pool():
    """1. Two engine threads, 32 greenlets; 400 transactions, a third of them denied in their
    request, the others answered (a response that closes them; every tenth denied in phase 3).
    2. Close the pool. Result: the blocks handed back are two per denied request or response,
    plus one per clean transaction whose rules left matches (none here), and none is left."""
    pool = EnginePool(2)
    engine = gated_engine(pool)

    def judge(index: int) -> bool:
        name = f"m{index}"
        tx = engine.new_transaction(name)
        if index % 3 == 0:
            return _blocked(engine, name).interrupted
        assert not tx.process_request(RequestInfo(name, query=b"a=1")).interrupted
        status = 299 if index % 10 == 1 else 200
        response = ResponseInfo(name, status=status)
        return tx.process_response(response, close_when=CloseWhen.ALWAYS).interrupted

    try:
        work = iter(range(400))
        results: list[tuple[int, bool]] = []

        def worker() -> None:
            for index in work:
                results.append((index, judge(index)))

        gevent.joinall([gevent.spawn(worker) for _ in range(32)], raise_error=True)
    finally:
        pool.close()
    blocked = sum(1 for index, interrupted in results if interrupted)
    assert blocked == sum(1 for index in range(400) if index % 3 == 0 or index % 10 == 1)
    assert _handed_back(pool) == (0, 2 * blocked)
