"""The shipped etc/haproxy/haproxy.cfg gets test addresses and the overlay lines, nothing else."""

from __future__ import annotations

from pathlib import Path

from tests.crs.through_haproxy import (
    FRONTEND_OVERLAY,
    SHIPPED_HAPROXY_DIR,
    Addresses,
    render_shipped_haproxy,
    spoe_backend_name,
)


def test_shipped_config_addresses_are_replaced_and_overlay_added() -> None:
    """1. Render the real shipped files. 2. The frontend binds the test port, the SPOE
    backend points at the agent, other backends at albedo, the filter at the rendered SPOE
    file, the demo listen section moves off 8081. 3. Every other line is unchanged."""
    shipped = (SHIPPED_HAPROXY_DIR / "haproxy.cfg").read_text()
    spoe_backend = spoe_backend_name((SHIPPED_HAPROXY_DIR / "coraza.cfg").read_text())
    where = Addresses(
        frontend_port=40001,
        backend="127.0.0.1:40002",
        agent="127.0.0.1:40003",
        spoe_config=Path("/tmp/x/coraza.cfg"),
        spoe_backend=spoe_backend,
    )
    rendered = render_shipped_haproxy(shipped, where)
    assert "bind 127.0.0.1:40001" in rendered
    assert "127.0.0.1:40003" in rendered
    assert "127.0.0.1:40002" in rendered
    assert "config /tmp/x/coraza.cfg" in rendered
    directives = "\n".join(
        line for line in rendered.splitlines() if not line.lstrip().startswith("#")
    )
    for fixed in ("127.0.0.1:8080", "127.0.0.1:9000", "127.0.0.1:8081"):
        assert fixed not in directives
    for line in FRONTEND_OVERLAY:
        assert line in rendered
    changed = set(rendered.splitlines()) - set(shipped.splitlines())
    assert len(changed) <= len(FRONTEND_OVERLAY) + 6, changed
