"""The hub's Python per transaction, without sockets: decode each NOTIFY payload, answer it with
``agent.handle`` over the real native engine pool (the soak's two small rules, or CRS), encode
the ACK (decoder and encoder the server's: ``spop_native``, in C); clean GETs with their
responses, or blocked attack GETs, 64 greenlets at once. Prints the hub thread's CPU
(``time.thread_time``) per transaction, median of the rounds.

Run: ``.venv/bin/python -m bench.hub_inprocess [--transactions 20000] [--rounds 3]
[--scenario clean_get|attack_get] [--rules small|crs] [--done-batch 16] [--done-delay-us 1000]
[--log | --log-file PATH]``; ``--log-file`` logs at info to a block-buffered file as the
bench's agent does (a blocked request's rule-match record included). Why: through HAProxy a
change of a few percent on the hub drowns in the box's noise (the ceiling moves by tens of
percent between runs), and over raw SPOP (``bench floor``) by ±15 %; this driver's runs agree
within a few percent with the small rules, so the changes of docs/performance.md (13 and on)
were measured with it. A report, not a test: it asserts only that every answer was right.
"""

from __future__ import annotations

# before gevent patches _thread, as cli.py (docs/engine.md "Threads": cffi's lock)
import cffi  # noqa: F401
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402

import gevent  # noqa: E402
from loguru import logger  # noqa: E402

from bench.agent_config import APP_NAME, RULE_SETS  # noqa: E402
from bench.scenarios import SCENARIOS  # noqa: E402
from bench.spop_client import ID_PLACEHOLDER, Template, request_message, response_message  # noqa: E402
from coraza_spoa_py import engine as waf  # noqa: E402
from coraza_spoa_py import logs, spop_native  # noqa: E402
from coraza_spoa_py.agent import Agent  # noqa: E402
from coraza_spoa_py.application import Application  # noqa: E402
from coraza_spoa_py.engine import engine_pool  # noqa: E402
from coraza_spoa_py.engine.engine_pool import EnginePool  # noqa: E402
from coraza_spoa_py.settings import AppConfig, BindAddress, Config, LogConfig, RulePaths  # noqa: E402
from coraza_spoa_py.spop import SetVar, frames  # noqa: E402

CONCURRENCY = 64  # greenlets with a transaction in flight, as the raw-SPOP load's connections
WARMUP = 2_000
BUDGET_S = 1.6  # the throughput runs' processing_budget_ms: nothing is shed


def _payloads(scenario: str, transactions: int) -> Iterator[tuple[memoryview, ...]]:
    # a blocked request has no response message (HAProxy answers 403 itself)
    chosen = SCENARIOS[scenario]
    templates = [Template.of(request_message(chosen, ID_PLACEHOLDER))]
    if not chosen.blocked:
        templates.append(
            Template.of(response_message(chosen, ID_PLACEHOLDER, chosen.response_body))
        )
    for number in range(transactions):
        tx_id = f"hub-{number:016d}".encode()
        yield tuple(frames.decode_frame(t.frame(tx_id, 1)).payload for t in templates)


def _failed(actions: Sequence[object]) -> bool:
    return any(isinstance(a, SetVar) and a.name == "fail" and a.value for a in actions)


def _error(actions: Sequence[object]) -> bool:
    return any(isinstance(a, SetVar) and a.name == "error" for a in actions)


def measure(agent: Agent, scenario: str, transactions: int) -> tuple[float, float]:
    """(hub CPU microseconds per transaction, transactions per second)."""
    work = iter(list(_payloads(scenario, transactions)))
    blocked = SCENARIOS[scenario].blocked
    wrong = 0

    def run() -> None:
        nonlocal wrong
        for messages in work:
            for index, payload in enumerate(messages):
                actions = agent.handle(spop_native.decode_messages(payload), time.monotonic())
                spop_native.encode_ack(1, 1, actions)
                expected = blocked and index == 0
                wrong += _error(actions) or _failed(actions) != expected

    cpu, wall = time.thread_time(), time.monotonic()
    gevent.joinall([gevent.spawn(run) for _ in range(CONCURRENCY)], raise_error=True)
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    if wrong:
        raise RuntimeError(f"{wrong} answers were not the expected verdict")
    return 1e6 * cpu / transactions, transactions / wall


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hub_inprocess", description=__doc__)
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", choices=["clean_get", "attack_get"], default="clean_get")
    parser.add_argument("--rules", choices=sorted(RULE_SETS), default="small")
    parser.add_argument(
        "--done-batch",
        type=int,
        default=engine_pool.DONE_BATCH,
        help="finished jobs per eventfd write (docs/performance.md change 41); 1: one per job",
    )
    parser.add_argument(
        "--done-delay-us",
        type=float,
        default=engine_pool.DONE_DELAY_S * 1e6,
        help="the longest a finished job waits for its batch while others run",
    )
    parser.add_argument(
        "--log",
        action="store_true",
        help="log at info on stderr as the agent does before its config is read (rule matches "
        "included); default: no log sink at all",
    )
    parser.add_argument(
        "--log-file",
        help="log at info to this file, block buffered, as the bench's agent does (its config's "
        "log_file); default: no log sink at all",
    )
    args = parser.parse_args()
    if args.log_file:
        logs.configure_logging(
            Config(bind=BindAddress("tcp"), log=LogConfig("info", args.log_file))
        )
    elif args.log:
        logs.configure_bootstrap("info")
    else:
        logger.remove()
    pool = EnginePool(2)
    pool.set_batching(args.done_batch, args.done_delay_us / 1e6)
    config = AppConfig(name=APP_NAME, directives=RULE_SETS[args.rules], response_check=True)
    engine = waf.load_engine(config, RulePaths(), pool)
    application = Application(config, engine, pool, processing_budget_s=BUDGET_S)
    agent = Agent({APP_NAME: application}, None)
    try:
        measure(agent, args.scenario, WARMUP)
        rounds = [measure(agent, args.scenario, args.transactions) for _ in range(args.rounds)]
    finally:
        pool.close()
    lines = [
        f"round {number}: {cpu_us:.0f} us of hub CPU per transaction, {rate:.0f} tx/s"
        for number, (cpu_us, rate) in zip(itertools.count(1), rounds, strict=False)
    ]
    lines.append(f"median: {statistics.median(r[0] for r in rounds):.0f} us per transaction")
    stats = application.stats
    lines.append(f"opened {stats.opened}, closed {stats.closed}, open {stats.open}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
