"""The config checks JSON Schema cannot state: ``bind`` forms, unique application names,
``default_application`` defined, TTL > 0 where responses are checked (docs/development.md "One
config pipeline").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coraza_spoa_py.config_problems import ConfigProblem, Locator
from coraza_spoa_py.settings import DEFAULT_TRANSACTION_TTL_MS, BindAddress


def parse_bind(text: str) -> BindAddress:
    """``bind`` → ``BindAddress``: coraza-spoa's forms and ours (docs/compatibility.md "Gen3
    keys").

    Accepts ``host:port``, ``:port``, ``[v6]:port``, ``tcp://host:port``, ``unix:///path`` and
    ``unix:/path``. Raises ``ValueError`` with what is wrong.
    """
    value = text.strip()
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("unix socket path is empty")
        return BindAddress("unix", path=path)
    for prefix in ("tcp://", "tcp4://", "tcp6://"):
        if value.startswith(prefix):
            value = value[len(prefix) :].rstrip("/")
            break
    if "://" in value:
        raise ValueError(f"unsupported scheme in {text!r} (use host:port, tcp:// or unix://)")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no port (write host:port, :port or unix:///path)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return BindAddress("tcp", host=host, port=int(port_text))


def cross_problems(data: Mapping[str, Any], locate: Locator) -> list[ConfigProblem]:
    """Checks that span keys or need code: ``bind`` forms, unique names, ``default_application``
    exists, TTL > 0 where responses are checked (docs/development.md "One config pipeline").

    Defensive about types, so it also runs on data the schema rejected: one run of the
    agent (or of -validate) lists every problem of the file.
    """
    problems: list[ConfigProblem] = []
    if isinstance(data.get("bind"), str):
        try:
            parse_bind(data["bind"])
        except ValueError as exc:
            problems.append(locate.problem(("bind",), str(exc)))
    items = data.get("applications")
    names: dict[str, int] = {}
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if isinstance(name, str) and name in names:
            problems.append(
                locate.problem(
                    ("applications", index, "name"),
                    f"duplicate application name {name!r} (also applications[{names[name]}])",
                )
            )
        if isinstance(name, str):
            names.setdefault(name, index)
        ttl = item.get("transaction_ttl_ms", DEFAULT_TRANSACTION_TTL_MS)
        if item.get("response_check") is True and isinstance(ttl, int) and ttl <= 0:
            problems.append(
                locate.problem(
                    ("applications", index, "transaction_ttl_ms"),
                    "must be > 0 when response_check is true (responses would never find "
                    "their request)",
                )
            )
    default = data.get("default_application") or None  # "" means none, as in coraza-spoa
    if isinstance(default, str) and default not in names:
        known = ", ".join(repr(n) for n in names) or "none"
        problems.append(
            locate.problem(
                ("default_application",),
                f"application {default!r} is not defined (defined: {known})",
            )
        )
    return problems
