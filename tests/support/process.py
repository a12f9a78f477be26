"""A subprocess the tests own: output captured to a file, always killed at teardown.

Every ``ManagedProcess`` is registered until it is stopped; an atexit hook kills the ones a
crashed or interrupted test run left behind, so no HAProxy or agent outlives pytest.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Self

_LIVE: set[ManagedProcess] = set()


class ProcessExitedError(AssertionError):
    """The process died while a test waited for it; the message carries its output."""


class ManagedProcess:
    """``argv`` run with stdout+stderr going to ``log_path``.

    Use as a context manager, or call ``start()`` / ``stop()`` yourself (in a fixture's
    finally). ``stop()`` sends SIGTERM, waits ``timeout`` seconds, then SIGKILLs.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def raise_if_exited(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessExitedError(
                f"{self.name} exited with status {self.popen.returncode}\n"
                f"command: {' '.join(self.argv)}\n--- output ---\n{self.logs()}"
            )

    def send_signal(self, signum: int) -> None:
        if self.is_running():
            assert self.popen is not None
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal, wait up to ``timeout``, then kill. Returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _LIVE.discard(self)
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(timeout=0.0, sig=signal.SIGKILL)

    # ---- output -------------------------------------------------------------------------

    def logs(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 30.0) -> str:
        """Poll the output until ``text`` appears ``count`` times (fail at once if the process
        exits meanwhile); the whole output then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if logs.count(text) >= count:
                return logs
            self.raise_if_exited()
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged {count}x in {timeout}s:\n{self.logs()}")

    def dump(self, stream: IO[str] | None = None) -> None:
        """Write the command and its output (pytest shows stderr of failing tests)."""
        out = stream or sys.stderr
        out.write(f"\n===== {self.name}: {' '.join(self.argv)} =====\n{self.logs()}\n")

    def __enter__(self) -> Self:
        if self.popen is None:
            self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.dump()
        finally:
            self.stop()


@contextmanager
def dump_on_error(*processes: ManagedProcess, files: Sequence[Path] = ()) -> Iterator[None]:
    """On an exception inside the block, write each file and each process output to stderr."""
    try:
        yield
    except BaseException:
        for path in files:
            sys.stderr.write(f"\n===== {path} =====\n{Path(path).read_text(errors='replace')}\n")
        for process in processes:
            process.dump()
        raise


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``: run a module with the test's interpreter."""
    return [sys.executable, "-m", module, *args]


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        process.kill()
