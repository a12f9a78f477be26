"""Render the shipped ``etc/haproxy/`` configuration for a bench run (ports, paths, overlay).

The bench measures the configuration users run, so it starts from the shipped files and changes
only what a bench must: addresses (free ports, never fixed ones), the SPOE
``timeout processing`` (2 s, so that a slow answer shows up as latency and, past 2 s, as a
counted SPOE timeout), the log line the bench counts from, ``tune.bufsize`` large enough for the
50 KB page, and a ``listen`` section that plays the web server. Pure text in, text out: this
module starts nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.haproxy_log import LOG_FORMAT
from bench.scenarios import BIG_PAGE_PATH, LEAK_PAGE_PATH

SECTION_RE = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist)\b")
SPOE_SECTION_RE = re.compile(r"^\s*(\[[^\]]+\]|spoe-agent|spoe-message|spoe-group)\b")
# tune.bufsize must hold the 50 KB page with its headers, and HAProxy truncates bodies at the
# buffer silently (docs/haproxy.md "Request bodies"); 128 KiB is what our e2e and
# CRS runs use.
BENCH_BUFSIZE = 131072
BENCH_PROCESSING_TIMEOUT = "2s"


@dataclass(frozen=True)
class Ports:
    frontend: int
    agent: int
    backend: int


@dataclass(frozen=True)
class Rendered:
    haproxy_cfg: str
    spoe_cfg: str


def split_sections(text: str) -> list[list[str]]:
    """HAProxy config lines grouped by section; the first group is whatever precedes any."""
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        if SECTION_RE.match(line):
            sections.append([line])
        else:
            sections[-1].append(line)
    return sections


def _keyword(line: str) -> str:
    stripped = line.strip()
    return stripped.split()[0] if stripped and not stripped.startswith("#") else ""


def _spoa_backends(spoe_text: str) -> set[str]:
    return set(re.findall(r"^\s*use-backend\s+(\S+)", spoe_text, flags=re.M))


def render_spoe(spoe_text: str) -> str:
    """The SPOE file with ``timeout processing`` set to the bench's value (added if absent)."""
    out, seen_agent, replaced = [], False, False
    for line in spoe_text.splitlines():
        if re.match(r"^\s*timeout\s+processing\b", line):
            line = f"    timeout processing {BENCH_PROCESSING_TIMEOUT}"
            replaced = True
        out.append(line)
        if re.match(r"^\s*spoe-agent\b", line):
            seen_agent = True
            if not re.search(r"^\s*timeout\s+processing\b", spoe_text, flags=re.M):
                out.append(f"    timeout processing {BENCH_PROCESSING_TIMEOUT}")
                replaced = True
    if not seen_agent or not replaced:
        raise ValueError("the shipped SPOE file has no spoe-agent section")
    return "\n".join(out) + "\n"


def render_haproxy(
    haproxy_text: str, spoe_text: str, *, ports: Ports, spoe_path: Path, pages_dir: Path
) -> Rendered:
    """Rewrite the shipped configuration for one bench run; see the module docstring."""
    spoa_backends = _spoa_backends(spoe_text)
    if not spoa_backends:
        raise ValueError("the shipped SPOE file names no use-backend")
    out: list[str] = []
    for section in split_sections(haproxy_text):
        head = section[0] if section else ""
        kind = head.split()[0] if head.strip() and SECTION_RE.match(head) else ""
        name = head.split()[1] if len(head.split()) > 1 else ""
        body = section[1:] if kind else section
        if kind == "listen":
            # a shipped listen section binds its own fixed port (stats page, demo web server):
            # the bench brings its own web server, so drop it whole
            continue
        if kind:
            out.append(head)
        if kind == "global":
            out.extend(_render_global(body))
        elif kind == "frontend":
            out.extend(_render_frontend(body, ports=ports, spoe_path=spoe_path))
        elif kind == "backend":
            target = ports.agent if name in spoa_backends else ports.backend
            out.extend(_render_backend(body, target))
        else:
            out.extend(body)
    out.extend(_backend_overlay(ports, pages_dir))
    return Rendered("\n".join(out) + "\n", render_spoe(spoe_text))


def _render_global(body: list[str]) -> list[str]:
    # dropped: daemon mode, privilege changes, sockets and files at fixed paths, other log
    # targets (the bench reads HAProxy's stdout), and the buffer size we set ourselves
    dropped = {"daemon", "user", "group", "chroot", "pidfile", "stats", "log", "tune.bufsize"}
    kept = [line for line in body if _keyword(line) not in dropped]
    return [
        "    log stdout format raw local0",
        f"    tune.bufsize {BENCH_BUFSIZE}",
        *kept,
    ]


def _render_frontend(body: list[str], *, ports: Ports, spoe_path: Path) -> list[str]:
    out = []
    for line in body:
        keyword = _keyword(line)
        if keyword == "bind":
            out.append(f"    bind 127.0.0.1:{ports.frontend}")
        elif keyword in ("log-format", "option") and (
            keyword == "log-format" or line.split()[1:2] in (["httplog"], ["tcplog"])
        ):
            continue  # replaced by the bench log line below
        elif keyword == "filter" and " spoe " in f" {line.strip()} ":
            out.append(re.sub(r"\bconfig\s+\S+", f"config {spoe_path}", line))
        else:
            out.append(line)
    # the bench counts requests, errors and uninspected passes from this line (haproxy_log)
    out.insert(0, f'    log-format "{LOG_FORMAT}"')
    out.insert(0, "    log global")
    return out


def _render_backend(body: list[str], target_port: int) -> list[str]:
    out = []
    for line in body:
        if _keyword(line) == "server":
            parts = line.split()
            # keep the server's options (check, inter, ...) but point it at our process
            out.append(f"    server {parts[1]} 127.0.0.1:{target_port} {' '.join(parts[3:])}")
        else:
            out.append(line)
    return out


def _backend_overlay(ports: Ports, pages_dir: Path) -> list[str]:
    """A web server made of HAProxy itself: C-speed, so the backend never limits the numbers,
    and a real server hop, so the response events fire as in production."""
    return [
        "",
        "# bench overlay: the web server behind the WAF (bench/haproxy_config.py)",
        "listen bench_web",
        f"    bind 127.0.0.1:{ports.backend}",
        "    mode http",
        "    no log",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout connect 5s",
        "    http-request return status 200 content-type text/html"
        f' file "{pages_dir}/big.html" if {{ path {BIG_PAGE_PATH} }}',
        "    http-request return status 200 content-type text/html"
        f' file "{pages_dir}/leak.html" if {{ path {LEAK_PAGE_PATH} }}',
        f'    http-request return status 200 content-type text/html file "{pages_dir}/small.html"',
    ]
