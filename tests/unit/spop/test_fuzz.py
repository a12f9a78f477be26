"""The codec's one invariant (h11's fuzz/afl-server.py): whatever bytes arrive, only events,
NEED_DATA or ``SpopError`` come out — never ValueError, IndexError, struct.error, a hang."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coraza_spoa_py import spop
from coraza_spoa_py.spop import frames, handshake
from coraza_spoa_py.spop.frames import FrameType
from tests.unit.spop import helpers

_EVENT_TYPES = (spop.HaproxyHello, spop.Notify, spop.HaproxyDisconnect, spop.ConnectionClosed)


def _run(conn: spop.Connection, pieces: list[bytes]) -> None:
    """Feed each piece, then EOF; check every outcome is an event, NEED_DATA or SpopError."""
    try:
        # an empty piece would mean EOF: it comes once, at the end
        for piece in [*(p for p in pieces if p), b""]:
            conn.receive_data(piece)
            for _ in range(10_000):  # a bound, so a codec loop bug fails instead of hanging
                event = conn.next_event()
                if event is spop.NEED_DATA or isinstance(event, spop.ConnectionClosed):
                    break
                assert isinstance(event, _EVENT_TYPES)
            else:
                pytest.fail("next_event() never asked for data")
    except spop.SpopError as error:
        assert isinstance(error.status, spop.StatusCode)
        assert conn.state is spop.ConnectionState.ERROR
        return
    # EOF was fed and reported: the connection is closed, and stays so
    assert conn.state is spop.ConnectionState.CLOSED
    assert isinstance(conn.next_event(), spop.ConnectionClosed)


# Frames that look plausible: a valid prefix and header around a random payload, so the fuzzer
# reaches the payload decoders and not only the length check.
_frame_types = st.sampled_from([*FrameType, 4, 200])
_plausible = st.builds(
    lambda t, sid, fid, payload, fin: frames.encode_frame(t, payload, sid, fid, 1 if fin else 0),
    _frame_types,
    st.integers(0, 300),
    st.integers(0, 3),
    st.binary(max_size=60),
    st.booleans(),
)
_garbage = st.lists(st.one_of(st.binary(max_size=40), _plausible), max_size=6)


@given(_garbage)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fresh_connection_yields_only_events_or_spop_error(pieces: list[bytes]) -> None:
    _run(spop.Connection(), pieces)


@given(_garbage)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_ready_connection_yields_only_events_or_spop_error(pieces: list[bytes]) -> None:
    _run(helpers.ready_connection(), pieces)


@given(st.binary(max_size=200), st.integers(1, 7))
@settings(max_examples=200)
def test_split_points_do_not_change_the_outcome(data: bytes, step: int) -> None:
    """The same bytes fed whole or in small pieces give the same events or the same status."""

    def outcome(pieces: list[bytes]) -> object:
        conn = helpers.ready_connection()
        events: list[object] = []
        try:
            for piece in pieces:
                conn.receive_data(piece)
                while (event := conn.next_event()) is not spop.NEED_DATA:
                    events.append(event)
        except spop.SpopError as error:
            return ("error", error.status, events)
        return ("ok", events)

    stream = helpers.V6_NOTIFY + data
    whole = outcome([stream])
    pieces = outcome([stream[i : i + step] for i in range(0, len(stream), step)])
    assert whole == pieces


@given(st.binary(max_size=120))
@settings(max_examples=300)
def test_payload_decoders_raise_only_spop_error(payload: bytes) -> None:
    view = memoryview(payload)
    for decode in (
        frames.decode_messages,
        frames.decode_actions,
        handshake.decode_haproxy_hello,
        handshake.decode_agent_hello,
        handshake.decode_disconnect,
    ):
        try:
            decode(view)
        except spop.SpopError as error:
            assert error.status is spop.StatusCode.INVALID
