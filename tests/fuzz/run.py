"""`make fuzz`: mutated SPOP inputs against the real agent process, over loopback (issue 15).

The agent (``python -m coraza_spoa_py``, small rules, response_check on) gets ``--inputs``
inputs: each a valid frame of a corpus (HELLOs, NOTIFYs of coraza-req/coraza-res as HAProxy
sends them, DISCONNECTs) mutated by a seeded random choice of bit flips, byte inserts and
deletes, truncation, a rewritten length prefix, spliced frames or plain random bytes; 3 in 4
after a valid HELLO, the others as the connection's first bytes. Each input has its own
connection, ended by EOF after it: the agent must have read it all and closed within 5 s (no
hang). Every ``--probe-every`` inputs a fresh connection must get the right verdict within 5 s
and the agent process must still run (no crash), and its RSS is sampled; at the end the peak
RSS of the second half must stay within ``--rss-slack-mib`` of the first half's (bounded).
Prints the counts; exits 1 on any failure.

Run: ``.venv/bin/python -m tests.fuzz.run [--inputs 1000000] [--seed 15]``. Not part of
``make test`` (it takes minutes); the unit-level fuzzing of the codec alone is
tests/unit/spop/test_fuzz.py (hypothesis).
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from coraza_spoa_py.spop import frames, handshake
from coraza_spoa_py.spop.frames import FrameType
from tests.support.agent import cli_agent
from tests.support.ports import free_port
from tests.support.spop_client import SpopClient, actions_by_name, message

AGENT_CONFIG = """\
bind: 127.0.0.1:{port}
log_level: error
log_file: {log}
default_application: fuzz
applications:
  - name: fuzz
    response_check: true
    transaction_ttl_ms: 2000
    transaction_active_limit: 5000
    directives: |
      SecRuleEngine On
      SecRequestBodyAccess On
      SecRule ARGS "@contains fuzz-attack" "id:10001,phase:2,deny,status:403,log"
"""
INPUT_TIMEOUT_S = 5.0
WORKERS = 8
HEADERS = b"host: example.com\r\nuser-agent: fuzz/1.0\r\naccept: */*\r\n\r\n"


def _corpus() -> list[bytes]:
    request = message(
        "coraza-req",
        app="fuzz",
        id="fuzz-0001",
        method="POST",
        path="/form",
        query="a=1&b=2",
        version="1.1",
        headers=HEADERS.decode(),
        body=b"name=alice&city=paris",
    )
    response = message(
        "coraza-res",
        app="fuzz",
        id="fuzz-0001",
        version="1.1",
        status=200,
        headers="content-type: text/html\r\n\r\n",
        body=b"<p>hi</p>",
    )
    return [
        handshake.encode_haproxy_hello(),
        handshake.encode_haproxy_hello(supported_versions="2.0", capabilities="pipelining,async"),
        handshake.encode_haproxy_hello(healthcheck=True),
        frames.encode_notify(1, 1, [request]),
        frames.encode_notify(2, 1, [response]),
        frames.encode_notify(3, 7, [request, response]),
        handshake.encode_haproxy_disconnect(2, "a timeout occurred"),
        frames.encode_frame(FrameType.NOTIFY, b"", 1, 1, 1),
    ]


def _mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(8)
        if how == 0 and data:  # bit flips
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:  # insert random bytes
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif how == 2 and len(data) > 1:  # delete a run
            at = rng.randrange(len(data))
            del data[at : at + rng.randint(1, 16)]
        elif how == 3 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif how == 4 and len(data) >= 4:  # a length prefix that lies
            data[0:4] = rng.choice([0, 1, 6, 7, len(data), 2**16, 2**31, 2**32 - 1]).to_bytes(4)
        elif how == 5:  # splice another frame
            data += rng.choice(corpus)
        elif how == 6 and data:  # a byte set to an edge value
            data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0xF0, 0xFF])
        else:  # random bytes, a random length
            data = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(data)


def _one_input(port: int, data: bytes, hello: bool) -> int:
    """One connection: (HELLO,) the input, then EOF; the agent must have processed it all and
    closed within 5 s. Returns how many bytes it answered; TimeoutError is a hang."""
    with socket.create_connection(("127.0.0.1", port), timeout=INPUT_TIMEOUT_S) as sock:
        try:
            sock.sendall((handshake.encode_haproxy_hello() if hello else b"") + data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent closed at a protocol error before all was sent
        answered = 0
        try:
            while chunk := sock.recv(65536):
                answered += len(chunk)
        except ConnectionResetError:
            pass
        return answered


def _probe(port: int, number: int) -> None:
    """A right verdict on a fresh connection within 5 s, or AssertionError / TimeoutError."""
    client = SpopClient(socket.create_connection(("127.0.0.1", port), timeout=5), timeout=5)
    try:
        client.hello()
        attack = message(
            "coraza-req", app="fuzz", id=f"probe-{number}", method="GET",
            path="/", query="q=fuzz-attack", version="1.1", headers=HEADERS.decode(),
            body=b"",
        )  # fmt: skip
        client.notify(1, 1, [attack])
        _, _, actions = client.read_ack()
        named = actions_by_name(actions)
        assert named.get("action") == b"deny" or named.get("action") == "deny", named
    finally:
        client.close()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--probe-every", type=int, default=10_000)
    parser.add_argument("--rss-slack-mib", type=float, default=64.0)
    args = parser.parse_args()
    corpus = _corpus()
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="spop-fuzz-") as folder:
        port = free_port()
        config = Path(folder) / "config.yml"
        config.write_text(AGENT_CONFIG.format(port=port, log=Path(folder) / "agent-log.txt"))
        with cli_agent(config, port=port, log_path=Path(folder) / "agent.out") as agent:
            agent.wait_ready(timeout=60)
            assert agent.popen is not None
            pid = agent.popen.pid
            answered = probes = 0
            rss: list[float] = [_rss_mib(pid)]
            lock = threading.Lock()
            next_number = iter(range(1, args.inputs + 1))
            failures: list[BaseException] = []

            def work() -> None:
                nonlocal answered, probes
                while not failures:
                    with lock:
                        number = next(next_number, None)
                    if number is None:
                        return
                    # one generator per input: the run is the same whatever the threads do
                    rng = random.Random(args.seed * 1_000_003 + number)
                    data = _mutate(rng, corpus)
                    try:
                        got = _one_input(port, data, hello=rng.random() < 0.75)
                        if number % args.probe_every == 0:
                            agent.raise_if_exited()
                            _probe(port, number)
                    except BaseException as exc:  # reported by the main thread
                        failures.append(exc)
                        out.write(f"FAIL at input {number} ({data!r}): {exc!r}\n")
                        return
                    with lock:
                        answered += got > 0
                        if number % args.probe_every == 0:
                            probes += 1
                            rss.append(_rss_mib(pid))
                            if number % (args.probe_every * 10) == 0:
                                out.write(
                                    f"{number} inputs, {time.monotonic() - started:.0f} s, "
                                    f"RSS {rss[-1]:.1f} MiB\n"
                                )
                                out.flush()

            started = time.monotonic()
            threads = [threading.Thread(target=work) for _ in range(WORKERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            if failures:
                return 1
            agent.raise_if_exited()
            _probe(port, 0)
            half = len(rss) // 2
            first_peak, second_peak = max(rss[: half or 1]), max(rss[half:] or rss)
            out.write(
                f"{args.inputs} inputs in {elapsed:.0f} s (seed {args.seed}): agent alive, "
                f"{probes + 1} probes answered right, {answered} inputs got bytes back "
                f"(AGENT-HELLO, ACK or AGENT-DISCONNECT); RSS start {rss[0]:.1f} MiB, "
                f"first-half peak {first_peak:.1f}, second-half peak {second_peak:.1f}, "
                f"end {rss[-1]:.1f}\n"
            )
            if second_peak > first_peak + args.rss_slack_mib:
                out.write(f"FAIL: RSS grew by more than {args.rss_slack_mib} MiB\n")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
