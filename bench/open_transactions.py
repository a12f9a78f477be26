"""Memory per open transaction, and the time to close them all at shutdown (issue 15).

Opens ``--transactions`` transactions whose response never comes (request messages only, 64
greenlets at once, as HAProxy's pipelined connections), over the real engine pool and rules
(CRS by default), then closes them all the way shutdown does (``Agent.close_all``). Prints the
process RSS before and after opening them (the engine's C++ objects and the Python ones), the
Python part alone (``tracemalloc``, with ``--tracemalloc``: slower; its top allocation sites
say where the Python bytes go), and how long the close took.

Run: ``.venv/bin/python -m bench.open_transactions [--transactions 100000] [--rules crs|small]
[--tracemalloc]``. A report, not a test: it asserts only that every request got its verdict.
"""

from __future__ import annotations

# before gevent patches _thread, as cli.py (docs/engine.md "Threads": cffi's lock)
import cffi  # noqa: F401
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import gevent  # noqa: E402
from loguru import logger  # noqa: E402

from bench.agent_config import APP_NAME, RULE_SETS  # noqa: E402
from bench.procstat import rss_bytes  # noqa: E402
from bench.scenarios import SCENARIOS  # noqa: E402
from bench.spop_client import ID_PLACEHOLDER, Template, request_message  # noqa: E402
from coraza_spoa_py import engine as waf  # noqa: E402
from coraza_spoa_py.agent import Agent  # noqa: E402
from coraza_spoa_py.application import Application  # noqa: E402
from coraza_spoa_py.engine.engine_pool import EnginePool  # noqa: E402
from coraza_spoa_py.settings import (  # noqa: E402
    DEFAULT_TRANSACTION_ACTIVE_LIMIT,
    AppConfig,
    RulePaths,
)
from coraza_spoa_py.spop import SetVar, frames  # noqa: E402

CONCURRENCY = 64
BUDGET_S = 60.0  # nothing is shed: every request must open its transaction


def _open(agent: Agent, count: int, prefix: str) -> None:
    template = Template.of(request_message(SCENARIOS["clean_get"], ID_PLACEHOLDER))
    numbers = iter(range(count))
    errors = 0

    def run() -> None:
        nonlocal errors
        for number in numbers:
            # the id is as long as the template's placeholder (20 bytes), as hub_inprocess does
            tx_id = f"{prefix[:3]}-{number:016d}".encode()
            payload = frames.decode_frame(template.frame(tx_id, 1))
            actions = agent.handle(frames.decode_messages(payload.payload), time.monotonic())
            errors += any(isinstance(a, SetVar) and a.name == "error" for a in actions)

    gevent.joinall([gevent.spawn(run) for _ in range(CONCURRENCY)], raise_error=True)
    if errors:
        raise RuntimeError(f"{errors} requests were answered with an error")


def _settle() -> int:
    gc.collect()
    waf.trim_heap()
    gevent.sleep(0.2)
    return rss_bytes(os.getpid())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.open_transactions", description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--rules", choices=sorted(RULE_SETS), default="crs")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--active-limit",
        type=int,
        default=0,
        help="transaction_active_limit (default: more than --transactions, nothing evicted; "
        f"{DEFAULT_TRANSACTION_ACTIVE_LIMIT} is the agent's default)",
    )
    args = parser.parse_args()
    logger.remove()
    pool = EnginePool(2)
    config = AppConfig(
        name=APP_NAME,
        directives=RULE_SETS[args.rules],
        response_check=True,
        transaction_ttl_ms=3_600_000,
        transaction_active_limit=args.active_limit or args.transactions + 1,
    )
    engine = waf.load_engine(config, RulePaths(), pool)
    application = Application(config, engine, pool, processing_budget_s=BUDGET_S)
    agent = Agent({APP_NAME: application}, None)
    out = sys.stdout
    try:
        # warm up: the first transactions grow pools that stay (thread arenas, caches)
        _open(agent, 2_000, "wup")
        application.close_all()
        before = _settle()
        evicted_before = application.stats.evicted
        if args.tracemalloc:
            tracemalloc.start()
            python_before = tracemalloc.take_snapshot()
        started = time.monotonic()
        _open(agent, args.transactions, "open")
        opened_in = time.monotonic() - started
        after = _settle()
        stats = application.stats
        per_tx = (after - before) / stats.open
        out.write(
            f"rules {args.rules}: {args.transactions} requests in {opened_in:.1f} s, "
            f"{stats.open} transactions open, {stats.evicted - evicted_before} evicted "
            f"(transaction_active_limit {config.transaction_active_limit})\n"
            f"RSS before {before / 2**20:.1f} MiB, with them {after / 2**20:.1f} MiB: "
            f"{per_tx / 1024:.1f} KiB per open transaction\n"
        )
        if args.tracemalloc:
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
            sites = snapshot.compare_to(python_before, "lineno")
            sites = snapshot.compare_to(python_before, "lineno")
            python_bytes = sum(site.size_diff for site in sites)
            out.write(
                f"Python heap (tracemalloc): {python_bytes / args.transactions:.0f} bytes per "
                "open transaction; top sites:\n"
            )
            for site in sites[:12]:
                out.write(f"  {site.size_diff / args.transactions:8.0f} B/tx  {site.traceback}\n")
        started = time.monotonic()
        closed = agent.close_all()
        pool.close()  # shutdown waits for the engine threads' last jobs, as runtime does
        out.write(f"close_all of {closed} + engine pool stop: {time.monotonic() - started:.1f} s\n")
        out.write(f"RSS after closing: {_settle() / 2**20:.1f} MiB\n")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
