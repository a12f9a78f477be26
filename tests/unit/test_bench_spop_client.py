"""The soak's raw SPOP load generator, offline: its NOTIFY templates decode to what HAProxy
would send, with the spliced transaction id, and its ACK reader finds the verdict."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from bench import spop_client
from bench.scenarios import SCENARIOS
from coraza_spoa_py.spop import DataType, SetVar, UnsetVar, VarScope, frames


def _one_frame(wire: bytes) -> frames.RawFrame:
    split = frames.split_frame(wire)
    assert split is not None and split[1] == len(wire)
    return split[0]


def test_template_splices_the_id_into_a_valid_notify():
    """1. Build the coraza-req template of the attack scenario, then a frame for one id.
    2. The frame decodes as a NOTIFY on the given stream, frame-id 1, whose args carry the
       id, HAProxy's types (IPV4, INT64, NULL or STRING query, BINARY body) and the
       scenario's values."""
    scenario = SCENARIOS["attack_get"]
    template = spop_client.Template.of(
        spop_client.request_message(scenario, spop_client.ID_PLACEHOLDER)
    )
    tx_id = b"soak-000000000000042"
    assert len(tx_id) == spop_client.ID_WIDTH
    split = frames.split_frame(template.frame(tx_id, 7))
    assert split is not None
    frame, _ = split
    assert (frame.type, frame.stream_id, frame.frame_id) == (frames.FrameType.NOTIFY, 7, 1)
    (message,) = frames.decode_messages(frame.payload)
    args: dict[str, tuple[DataType, Any]] = {
        arg.name: (arg.type, arg.value) for arg in message.args
    }
    assert message.name == "coraza-req"
    assert args["id"] == (DataType.STRING, tx_id)
    assert args["src-ip"] == (DataType.IPV4, IPv4Address("127.0.0.1"))
    assert args["src-port"] == (DataType.INT64, 40000)
    assert args["query"] == (DataType.STRING, b"p=/etc/passwd")
    assert args["body"] == (DataType.BINARY, b"")
    assert args["headers"][1].endswith(b"\r\n\r\n")


def test_response_template_carries_the_page():
    scenario = SCENARIOS["response_50k"]
    template = spop_client.Template.of(
        spop_client.response_message(scenario, spop_client.ID_PLACEHOLDER, scenario.response_body)
    )
    frame = _one_frame(template.frame(b"x" * spop_client.ID_WIDTH, 1))
    (message,) = frames.decode_messages(frame.payload)
    args = {arg.name: arg.value for arg in message.args}
    assert args["body"] == scenario.response_body
    assert args["status"] == 200


def test_ack_verdict_reads_fail_and_error():
    ack = frames.encode_ack(
        3,
        1,
        [
            SetVar(VarScope.TRANSACTION, "fail", 1),
            SetVar(VarScope.TRANSACTION, "error", 1005),
            UnsetVar(VarScope.TRANSACTION, "noop"),
        ],
    )
    frame = _one_frame(ack)
    assert spop_client.ack_verdict(frame.payload) == (1, 1005)
    empty = _one_frame(frames.encode_ack(3, 1, []))
    assert spop_client.ack_verdict(empty.payload) == (None, None)


def test_soak_plan_mixes_attacks_and_orphans():
    plan = spop_client.soak_plan(attack_every=10, orphan_every=20)
    kinds = [plan(n) for n in range(1, 41)]
    attacks = [n for n, (scenario, _) in enumerate(kinds, 1) if scenario.blocked]
    orphans = [
        n for n, (scenario, respond) in enumerate(kinds, 1) if not scenario.blocked and not respond
    ]
    assert attacks == [10, 20, 30, 40]
    assert orphans == [1, 21]
