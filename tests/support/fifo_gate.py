"""Release an engine call blocked in tests/data/rules/wait_for_fifo.sh (a rule's @inspectFile
script that reads "go" from a FIFO): the deterministic way to hold an engine thread inside a
call, without timing."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path


def release_fifo_gate(
    fifo: Path, *, sleep: Callable[[float], object] = time.sleep, timeout_s: float = 15.0
) -> None:
    """Wait until the script has the FIFO open for reading, then write "go". ``sleep``:
    ``gevent.sleep`` when the engine call is a job parked on the hub."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # O_NONBLOCK: succeeds only while the script (inside the engine call) reads
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            assert exc.errno == errno.ENXIO
            assert time.monotonic() < deadline, "the engine call never reached the script"
            sleep(0.002)
    os.write(fd, b"go\n")
    os.close(fd)
