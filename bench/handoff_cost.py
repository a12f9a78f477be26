"""``python -m bench.handoff_cost``: the CPU one hand-off costs, both sides, in µs per response.

A worker that gets a ``coraza-res`` of a transaction another worker holds sends it over that
worker's hand-off socket (``coraza_spoa_py.handoff``, docs/architecture.md "Process model").
What that adds per handed-off response: on the sender, encoding the NOTIFY, the unix socket
round trip and decoding the ACK (``HandoffClient.call``); on the owner, a second
``AgentServer`` reading the frame, decoding it and encoding the ACK. The owner's engine work
is not part of it (it would run for that response anyway), so its handler here answers at once
with the variables a clean response gets.

The owner runs in its own process (``--serve PATH``), as a worker does; ``concurrency``
greenlets call the client at once (pipelined on one connection, as a busy worker's greenlets
do). Prints one JSON line: calls, wall time, CPU of each side (getrusage / /proc), µs per
hand-off. Measures only; the workers bench (``bench.workers``) multiplies it by the share of
responses handed off.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
from loguru import logger  # noqa: E402

from bench.procstat import cpu_seconds  # noqa: E402
from coraza_spoa_py import spop  # noqa: E402
from coraza_spoa_py.handoff import HandoffClient  # noqa: E402
from coraza_spoa_py.server import AgentServer  # noqa: E402
from coraza_spoa_py.settings import BindAddress  # noqa: E402
from coraza_spoa_py.spop import frames  # noqa: E402

DEFAULT_CALLS = 20_000
DEFAULT_CONCURRENCY = 32
# what the shipped coraza.cfg sends for a small page's response (docs/protocol.md)
RESPONSE_HEADERS = (
    b"content-type\x00text/html\x00content-length\x0075\x00cache-control\x00no-cache\x00"
    b"date\x00Fri, 04 Dec 2026 15:00:00 GMT\x00server\x00bench\x00\x00"
)
CLEAN_ANSWER = (spop.SetVar(spop.VarScope.TRANSACTION, "fail", 0),)
# as the sender decodes it (the type is filled in)
EXPECTED = frames.decode_actions(memoryview(frames.encode_actions(CLEAN_ANSWER)))


def response_message(n: int) -> spop.Message:
    arg = spop.Arg
    types = spop.DataType
    return spop.Message(
        "coraza-res",
        (
            arg("app", types.STRING, b"sample_app"),
            arg("id", types.STRING, f"{n:08x}-4f6c-4c1e-9d3a-5b2e1c0f7a9d".encode()),
            arg("version", types.STRING, b"1.1"),
            arg("status", types.INT32, 200),
            arg("headers", types.BINARY, RESPONSE_HEADERS),
            arg("body", types.BINARY, b""),
        ),
    )


def serve(path: str) -> None:
    def answer(messages: Sequence[spop.Message], received_at: float) -> Sequence[spop.Action]:
        return CLEAN_ANSWER

    server = AgentServer(BindAddress(kind="unix", path=path), answer)
    server.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    gevent.wait()


def measure(calls: int, concurrency: int) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="bench-handoff-")
    path = os.path.join(folder, "handoff.sock")
    owner = subprocess.Popen(
        [sys.executable, "-m", "bench.handoff_cost", "--serve", path],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        client = HandoffClient(path)
        messages = [[response_message(n)] for n in range(calls)]
        for batch in messages[:200]:  # warm-up: connect, caches
            assert client.call(batch) == EXPECTED
        failed = 0

        def one(batch: list[spop.Message]) -> None:
            nonlocal failed
            if client.call(batch) != EXPECTED:
                failed += 1

        owner0, self0 = cpu_seconds(owner.pid), _own_cpu()
        started = time.monotonic()
        gevent.pool.Pool(concurrency).map(one, messages)
        wall = time.monotonic() - started
        owner_cpu, sender_cpu = cpu_seconds(owner.pid) - owner0, _own_cpu() - self0
        client.close()
    finally:
        owner.kill()
        owner.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "calls": calls,
        "concurrency": concurrency,
        "failed": failed,
        "wall_s": wall,
        "calls_per_s": calls / wall,
        "sender_cpu_us_per_handoff": 1e6 * sender_cpu / calls,
        "owner_cpu_us_per_handoff": 1e6 * owner_cpu / calls,
        "cpu_us_per_handoff": 1e6 * (sender_cpu + owner_cpu) / calls,
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logger.remove()  # the connection lines at debug would be measured too
    if args.serve:
        serve(args.serve)
        return 0
    sys.stdout.write(json.dumps(measure(args.calls, args.concurrency)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
