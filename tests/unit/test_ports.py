"""The test harness's port picker: what e2e stacks rely on to start without collisions."""

from __future__ import annotations

import random
import socket

import pytest

from tests.support import ports


def test_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() -> None:
    low, high = ports._ephemeral_range()
    picked = [ports.free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    assert not any(low <= port <= high for port in picked)


@pytest.mark.parametrize(
    ("ephemeral", "listeners"),
    [
        ("32768\t60999", (10000, 32767)),  # Linux's default: below it
        ("1024\t50000", (50001, 65535)),  # a low range: above it
        ("1024\t65000", (10000, 65535)),  # nearly everything: anywhere
    ],
)
def test_listener_ports_come_from_the_wider_stretch_outside_the_range(
    tmp_path, monkeypatch, ephemeral, listeners
) -> None:
    fake = tmp_path / "range"
    fake.write_text(ephemeral + "\n")
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE_FILE", str(fake))
    assert ports._listener_range() == listeners


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        # the picker draws the taken port first, then ports as usual
        draws = [taken]
        usual = random.Random().randint
        monkeypatch.setattr(
            ports._random, "randint", lambda low, high: draws.pop() if draws else usual(low, high)
        )
        assert ports.free_port() != taken
        assert draws == []  # the taken port was tried and refused


def test_the_kernel_range_is_read_from_proc(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "range"
    fake.write_text("40000\t50000\n")
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE_FILE", str(fake))
    assert ports._ephemeral_range() == (40000, 50000)
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE_FILE", str(tmp_path / "missing"))
    assert ports._ephemeral_range() == (32768, 60999)
