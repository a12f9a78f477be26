"""A test agent: ``AgentServer`` + a toy handler, run as a subprocess by the SPOP e2e tests.

    python -m tests.e2e.spop_test_agent --bind 127.0.0.1:PORT [--max-delay-ms 5]

The handler sets ``fail`` = 1 when the ``path`` argument contains ``attack`` (else 0), ``seen``
= the message name, and ``concurrent`` = how many handler calls were running at once (so tests
can see pipelining); a path containing ``crash`` raises, which the server must turn into
``error`` = 1003; one containing ``slow`` stays in the handler for a second (graceful-stop
tests). Each call sleeps a random 0..max-delay ms so ACKs come back out of order.
It is test data for the server, not the product (the product is ``python -m coraza_spoa_py``).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys

import gevent
from loguru import logger

from coraza_spoa_py import spop
from coraza_spoa_py.server import AgentServer
from coraza_spoa_py.settings import BindAddress

_running = 0
SLOW_S = 1.0  # a path containing "slow" keeps its NOTIFY in flight this long


def handle(messages: tuple[spop.Message, ...], received_at: float, max_delay_s: float) -> list:
    global _running
    _running += 1
    try:
        concurrent = _running
        if max_delay_s:
            gevent.sleep(random.uniform(0, max_delay_s))
        actions: list[spop.Action] = []
        for message in messages:
            path = next((a.value for a in message.args if a.name == "path"), b"") or b""
            assert isinstance(path, bytes), f"path sent as {path!r}"
            if b"crash" in path:
                raise RuntimeError("test handler crash requested by the path")
            if b"slow" in path:
                logger.debug("slow notify path={}", path.decode("latin-1"))
                gevent.sleep(SLOW_S)
            actions.append(spop.SetVar(spop.VarScope.TRANSACTION, "fail", int(b"attack" in path)))
            actions.append(spop.SetVar(spop.VarScope.TRANSACTION, "seen", message.name))
            actions.append(spop.SetVar(spop.VarScope.TRANSACTION, "concurrent", concurrent))
        return actions
    finally:
        _running -= 1


def parse_bind(text: str) -> BindAddress:
    if text.startswith("unix://"):
        return BindAddress(kind="unix", path=text[len("unix://") :])
    host, _, port = text.rpartition(":")
    return BindAddress(kind="tcp", host=host.strip("[]"), port=int(port))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--idle-timeout", type=float, default=600.0)
    parser.add_argument("--graceful-timeout", type=float, default=5.0)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="DEBUG", format="{time:HH:mm:ss.SSS} {level} {extra} {message}")
    max_delay_s = args.max_delay_ms / 1000.0
    server = AgentServer(
        parse_bind(args.bind),
        lambda messages, received_at: handle(messages, received_at, max_delay_s),
        idle_timeout_s=args.idle_timeout,
    )
    server.start()
    # signal handlers only spawn the work (docs/development.md "Monkey-patch first")
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, gevent.spawn, server.stop, args.graceful_timeout)
    server.serve_forever()
    logger.info("test agent exiting")


if __name__ == "__main__":
    main()
