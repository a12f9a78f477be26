"""``python -m bench.floor_agent PORT``: the cheapest agent the decided architecture allows.

It serves SPOP the way the agent does (gevent, every socket on the main thread, the project's
pure-Python codec from ``coraza_spoa_py.spop``) and answers every NOTIFY at once with the
actions the agent sends for a clean verdict, built by the agent's own ``verdict_actions``. It
runs no application layer and no engine: what it costs per transaction is the floor under
the agent's hub, the part no change to the application code can remove (docs/performance.md
"The floor under the hub"). A bench tool only: it inspects nothing.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402  (after patching, as the agent's CLI does)
import sys  # noqa: E402

import gevent.server  # noqa: E402

from coraza_spoa_py import spop  # noqa: E402
from coraza_spoa_py.models import Verdict  # noqa: E402
from coraza_spoa_py.verdicts import verdict_actions  # noqa: E402

RECV_SIZE = 65536  # as the agent's reader
# what the agent answers a clean coraza-res (a coraza-req adds the id: one more short action)
CLEAN_ACTIONS = verdict_actions(
    Verdict(), transaction_id=None, export_rule_ids=False, detect_only=False
)


def serve_connection(sock: socket.socket, _peer: object) -> None:
    codec = spop.Connection()
    while True:
        chunk = sock.recv(RECV_SIZE)
        codec.receive_data(chunk)
        replies = []
        while (event := codec.next_event()) is not spop.NEED_DATA:
            if isinstance(event, spop.Notify):
                replies.append(codec.send_ack(event.stream_id, event.frame_id, CLEAN_ACTIONS))
            elif isinstance(event, spop.HaproxyHello):
                replies.append(codec.data_to_send())
            else:  # a disconnect or the end of the stream
                sock.close()
                return
        if replies:
            sock.sendall(b"".join(replies))


def main(argv: list[str]) -> None:
    server = gevent.server.StreamServer(("127.0.0.1", int(argv[1])), serve_connection)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
