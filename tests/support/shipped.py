"""The SHIPPED ``etc/haproxy/haproxy.cfg`` + ``coraza.cfg``, rendered for a test
(docs/development.md "Shipped files, not copies"
 : tests run what users run, never an inline copy).

The shipped files are runnable as is, so they have no ``${NAME}`` placeholders: fixed ports
(frontend 8080, agent 9000, demo app 8081) and a relative SPOE path. ``render_shipped`` rewrites
exactly those lines, section by section, and keeps every other line (comments included) byte
for byte; it can ADD lines at the top of ``global`` and of the frontend, because HAProxy cannot
reopen a proxy from a second ``-f`` file. A line it must rewrite that is not in the shipped file
is an error naming it: a changed shipped file fails here, instead of silently testing
something else. ``shipped_haproxy`` renders and runs it through ``start_haproxy``.

It must not start anything but HAProxy, nor change any other line of the shipped files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.haproxy import PROJECT_ROOT, HAProxy, start_haproxy
from tests.support.ports import free_port

SHIPPED_DIR = PROJECT_ROOT / "etc" / "haproxy"
# file names in the workdir: distinct from start_haproxy's own haproxy.cfg / overlayN.cfg
RENDERED_HAPROXY_NAME = "shipped-haproxy.cfg"
RENDERED_SPOE_NAME = "coraza.cfg"

_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers)\b\s*(\S*)")
_BIND = re.compile(r"^(\s+bind\s+)\S+(.*)$")
_SERVER = re.compile(r"^(\s+server\s+\S+\s+)\S+(.*)$")
_SPOE_FILTER = re.compile(r"^(\s+filter\s+spoe\b.*\bconfig\s+)\S+(.*)$")
_CHECK_INTERVAL = re.compile(r"(\sinter\s+)\S+")
_USE_BACKEND = re.compile(r"^\s*use-backend\s+(\S+)", re.MULTILINE)


class ShippedConfigError(ValueError):
    """The shipped file lacks a line the renderer must rewrite (or has it more than once)."""


@dataclass(frozen=True)
class ShippedConfig:
    haproxy_cfg: Path  # the rendered haproxy.cfg (a template for start_haproxy)
    spoe_cfg: Path  # the copied coraza.cfg its ``filter spoe`` loads
    demo_port: int  # where the demo app (the shipped ``listen`` section) binds


def spoe_backend_name(spoe_text: str) -> str:
    """The backend coraza.cfg's ``use-backend`` names: the one whose server is the agent."""
    found = _USE_BACKEND.search(spoe_text)
    if not found:
        raise ShippedConfigError("the shipped coraza.cfg names no use-backend")
    return found.group(1)


def render_shipped_text(
    text: str,
    *,
    frontend_port: int,
    agent_port: int,
    spoe_backend: str,
    spoe_config: Path,
    demo_port: int,
    backend_port: int | None = None,
    agent_check_interval: str | None = None,
    global_lines: Sequence[str] = (),
    frontend_lines: Sequence[str] = (),
) -> str:
    """``text`` (a shipped haproxy.cfg) with its addresses rewritten; see ``render_shipped``."""
    app_target = f"127.0.0.1:{backend_port if backend_port is not None else demo_port}"
    out: list[str] = []
    kind = name = ""
    added = {"global": global_lines, "frontend": frontend_lines}
    done: Counter[str] = Counter()  # what was rewritten (or added to), by kind
    for line in text.splitlines(keepends=True):
        section = _SECTION.match(line)
        if section:
            kind, name = section.group(1), section.group(2)
            out.append(line)
            done[kind] += 1
            out.extend(f"{extra}\n" for extra in added.get(kind, ()))
            continue
        body, newline = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        bind, server, spoe = _BIND.match(body), _SERVER.match(body), _SPOE_FILTER.match(body)
        if bind and kind in ("frontend", "listen"):
            port = frontend_port if kind == "frontend" else demo_port
            body = f"{bind.group(1)}127.0.0.1:{port}{bind.group(2)}"
            done[f"{kind} bind"] += 1
        elif server and kind == "backend" and name == spoe_backend:
            body = f"{server.group(1)}127.0.0.1:{agent_port}{server.group(2)}"
            if agent_check_interval is not None:
                body, found = _CHECK_INTERVAL.subn(rf"\g<1>{agent_check_interval}", body)
                _expect(found, 1, f"'inter' on the agent's server line {body.strip()!r}")
            done["agent server"] += 1
        elif server and kind == "backend":
            body = f"{server.group(1)}{app_target}{server.group(2)}"
            done["application server"] += 1
        elif spoe and kind == "frontend":
            body = f"{spoe.group(1)}{spoe_config}{spoe.group(2)}"
            done["spoe filter"] += 1
        out.append(body + newline)
    # exactly one of each: two frontends or two agents would need ports this renderer lacks
    _expect(done["frontend"], 1, "'frontend' section")
    _expect(done["frontend bind"], 1, "'bind' line in the frontend")
    _expect(done["spoe filter"], 1, "'filter spoe ... config' line in the frontend")
    _expect(done["agent server"], 1, f"'server' line in backend {spoe_backend!r}")
    _expect(done["listen bind"], (0, 1), "'bind' line in a 'listen' section (the demo app)")
    if global_lines:
        _expect(done["global"], 1, "'global' section")
    if backend_port is None and done["listen bind"] == 0:
        raise ShippedConfigError(
            "the shipped haproxy.cfg has no demo app ('listen' section) for the application"
            " backend to point at: pass backend_port"
        )
    return "".join(out)


def _expect(found: int, wanted: int | tuple[int, ...], what: str) -> None:
    allowed = wanted if isinstance(wanted, tuple) else (wanted,)
    if found not in allowed:
        raise ShippedConfigError(
            f"the shipped haproxy.cfg changed: expected {' or '.join(map(str, allowed))}"
            f" {what}, found {found}; update tests/support/shipped.py"
        )


def render_shipped(
    workdir: Path,
    *,
    frontend_port: int,
    agent_port: int,
    backend_port: int | None = None,
    demo_port: int | None = None,
    agent_check_interval: str | None = None,
    global_lines: Sequence[str] = (),
    frontend_lines: Sequence[str] = (),
    shipped_dir: Path = SHIPPED_DIR,
) -> ShippedConfig:
    """Write the shipped haproxy.cfg (as ``shipped-haproxy.cfg``) and coraza.cfg into ``workdir``.

    Rewritten, and nothing else: the frontend's ``bind`` → ``frontend_port``; its ``filter spoe
    ... config`` → the copied coraza.cfg (unchanged: it names no address); the server of the
    backend coraza.cfg's ``use-backend`` names → ``agent_port`` (and its ``inter`` →
    ``agent_check_interval`` if given); every other backend's servers → ``backend_port``, or
    the demo app when None (as shipped); the demo app's ``listen`` bind → ``demo_port`` (a free
    port when None). ``global_lines`` / ``frontend_lines`` are added right after the section's
    header. ``${NAME}`` in added lines is left for ``start_haproxy`` to substitute.
    """
    spoe_text = (shipped_dir / "coraza.cfg").read_text()
    workdir.mkdir(parents=True, exist_ok=True)
    spoe_cfg = workdir / RENDERED_SPOE_NAME
    spoe_cfg.write_text(spoe_text)
    demo = demo_port if demo_port is not None else free_port()
    haproxy_cfg = workdir / RENDERED_HAPROXY_NAME
    haproxy_cfg.write_text(
        render_shipped_text(
            (shipped_dir / "haproxy.cfg").read_text(),
            frontend_port=frontend_port,
            agent_port=agent_port,
            spoe_backend=spoe_backend_name(spoe_text),
            spoe_config=spoe_cfg,
            demo_port=demo,
            backend_port=backend_port,
            agent_check_interval=agent_check_interval,
            global_lines=global_lines,
            frontend_lines=frontend_lines,
        )
    )
    return ShippedConfig(haproxy_cfg, spoe_cfg, demo)


@contextmanager
def shipped_haproxy(
    version: str,
    workdir: Path,
    *,
    frontend_port: int,
    agent_port: int,
    backend_port: int | None = None,
    agent_check_interval: str | None = None,
    global_lines: Sequence[str] = (),
    frontend_lines: Sequence[str] = (),
    shipped_dir: Path = SHIPPED_DIR,
    substitutions: Mapping[str, object] | None = None,
    overlays: Sequence[Path] = (),
    wait_ports: Sequence[int] = (),
    more_agent_ports: Sequence[int] = (),
) -> Iterator[HAProxy]:
    """``render_shipped`` into ``workdir``, then ``start_haproxy`` on it (plus ``overlays``);
    waits for ``frontend_port`` and ``wait_ports``. ``SPOE_CFG`` (the copied coraza.cfg) is
    defined for the overlays. ``more_agent_ports``: agents beside ``agent_port`` in the SPOE
    backend (``several_agents``)."""
    shipped = render_shipped(
        workdir,
        frontend_port=frontend_port,
        agent_port=agent_port,
        backend_port=backend_port,
        agent_check_interval=agent_check_interval,
        global_lines=global_lines,
        frontend_lines=frontend_lines,
        shipped_dir=shipped_dir,
    )
    if more_agent_ports:
        text = shipped.haproxy_cfg.read_text()
        spoe_backend = spoe_backend_name(shipped.spoe_cfg.read_text())
        shipped.haproxy_cfg.write_text(
            several_agents(text, spoe_backend, [agent_port, *more_agent_ports])
        )
    with start_haproxy(
        version,
        shipped.haproxy_cfg,
        workdir,
        substitutions={"SPOE_CFG": shipped.spoe_cfg, **(substitutions or {})},
        overlays=overlays,
        wait_ports=[frontend_port, *wait_ports],
    ) as haproxy:
        yield haproxy


def several_agents(text: str, spoe_backend: str, ports: Sequence[int]) -> str:
    """A rendered haproxy.cfg with the agent backend's one ``server`` line made one per port,
    and ``balance roundrobin``: several agents as several ``server`` lines (or replicas behind
    one Service), the setup where a response can reach another agent than its request."""
    out: list[str] = []
    name = ""
    done = 0
    for line in text.splitlines(keepends=True):
        section = _SECTION.match(line)
        if section:
            name = section.group(2) if section.group(1) == "backend" else ""
        server = _SERVER.match(line.rstrip("\n"))
        if server and name == spoe_backend:
            head, rest = server.group(1), server.group(2)
            named = re.match(r"^(\s+)server\s+(\S+)", head)
            assert named is not None  # _SERVER matched this line
            indent, server_name = named.groups()
            out.append(f"{indent}balance roundrobin\n")
            out.extend(
                f"{indent}server {server_name}-{n} 127.0.0.1:{port}{rest}\n"
                for n, port in enumerate(ports)
            )
            done += 1
            continue
        out.append(line)
    _expect(done, 1, f"'server' line in backend {spoe_backend!r}")
    return "".join(out)
