"""SPOP handshake and goodbye frames: HELLO and DISCONNECT in both directions (KV lists).

It reads and writes the keys of docs/protocol.md "HELLO keys" and "Disconnect" and checks their
types (a known key with the wrong type is an invalid frame). It does not negotiate: which
version, size or capability is acceptable, and which status to answer, is ``connection``'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from coraza_spoa_py.spop.errors import StatusCode
from coraza_spoa_py.spop.events import DataType, TypedValue
from coraza_spoa_py.spop.frames import FrameType, encode_frame
from coraza_spoa_py.spop.wire import Reader, encode_kv_list, invalid_frame

# KV keys of HELLO and DISCONNECT frames (docs/protocol.md "HELLO keys", "Disconnect")
KEY_SUPPORTED_VERSIONS = "supported-versions"
KEY_VERSION = "version"
KEY_MAX_FRAME_SIZE = "max-frame-size"
KEY_CAPABILITIES = "capabilities"
KEY_ENGINE_ID = "engine-id"
KEY_HEALTHCHECK = "healthcheck"
KEY_STATUS_CODE = "status-code"
KEY_MESSAGE = "message"
CAPABILITY_PIPELINING = "pipelining"
SPOP_VERSION = "2.0"

# HAProxy <= 3.0 rejects an agent DISCONNECT message longer than 255 bytes (docs/protocol.md
# "Disconnect")
MAX_DISCONNECT_MESSAGE = 255
_INTEGER_TYPES = frozenset({DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64})


@dataclass(frozen=True, slots=True)
class HaproxyHelloFrame:
    """What a HAPROXY-HELLO carried; None: the key was absent (docs/protocol.md "HELLO keys")."""

    supported_versions: str | None
    max_frame_size: int | None
    capabilities: tuple[str, ...]
    engine_id: str | None
    healthcheck: bool


@dataclass(frozen=True, slots=True)
class AgentHelloFrame:
    """What an AGENT-HELLO carried; None: the key was absent (docs/protocol.md "HELLO keys")."""

    version: str | None
    max_frame_size: int | None
    capabilities: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class DisconnectFrame:
    status: int
    message: bytes


def split_capabilities(value: bytes) -> tuple[str, ...]:
    """A comma list; spaces around tokens are ignored (docs/protocol.md "HELLO keys")."""
    return tuple(t for t in (p.strip() for p in value.decode("latin-1").split(",")) if t)


def _kv(payload: memoryview) -> dict[str, TypedValue]:
    # duplicate keys are tolerated, the last one wins; unknown keys are skipped
    # (docs/protocol.md "HELLO keys")
    return dict(Reader(payload).kv_list())


def _string(items: dict[str, TypedValue], key: str) -> bytes | None:
    typed = items.get(key)
    if typed is None:
        return None
    if typed.type is not DataType.STRING or not isinstance(typed.value, bytes):
        raise invalid_frame(f"{key} must be a STRING")
    return typed.value


def _integer(items: dict[str, TypedValue], key: str) -> int | None:
    typed = items.get(key)
    if typed is None:
        return None
    if typed.type not in _INTEGER_TYPES or not isinstance(typed.value, int):
        raise invalid_frame(f"{key} must be an integer")
    return typed.value


def decode_haproxy_hello(payload: memoryview) -> HaproxyHelloFrame:
    items = _kv(payload)
    versions = _string(items, KEY_SUPPORTED_VERSIONS)
    capabilities = _string(items, KEY_CAPABILITIES)
    engine_id = _string(items, KEY_ENGINE_ID)
    healthcheck = items.get(KEY_HEALTHCHECK)
    if healthcheck is not None and healthcheck.type is not DataType.BOOL:
        raise invalid_frame(f"{KEY_HEALTHCHECK} must be a BOOL")
    return HaproxyHelloFrame(
        supported_versions=None if versions is None else versions.decode("latin-1"),
        max_frame_size=_integer(items, KEY_MAX_FRAME_SIZE),
        capabilities=() if capabilities is None else split_capabilities(capabilities),
        engine_id=None if engine_id is None else engine_id.decode("latin-1"),
        healthcheck=healthcheck is not None and healthcheck.value is True,
    )


def decode_agent_hello(payload: memoryview) -> AgentHelloFrame:
    items = _kv(payload)
    version = _string(items, KEY_VERSION)
    capabilities = _string(items, KEY_CAPABILITIES)
    return AgentHelloFrame(
        version=None if version is None else version.decode("latin-1"),
        max_frame_size=_integer(items, KEY_MAX_FRAME_SIZE),
        capabilities=None if capabilities is None else split_capabilities(capabilities),
    )


def decode_disconnect(payload: memoryview) -> DisconnectFrame:
    """Either DISCONNECT (docs/protocol.md "Disconnect"). A missing status reads as 99, a
    missing message as empty: the peer is leaving anyway and we only report what it said."""
    items = _kv(payload)
    status = _integer(items, KEY_STATUS_CODE)
    message = _string(items, KEY_MESSAGE)
    return DisconnectFrame(
        status=StatusCode.UNKNOWN if status is None else status,
        message=b"" if message is None else message,
    )


def _kv_frame(frame_type: FrameType, items: Iterable[tuple[str, TypedValue]]) -> bytes:
    return encode_frame(frame_type, encode_kv_list(items))


@lru_cache(maxsize=64)
def encode_agent_hello(max_frame_size: int, pipelining: bool) -> bytes:
    """AGENT-HELLO (docs/protocol.md "HELLO keys"). ``capabilities`` is always present, even
    empty: the 3.1+ health check requires it. Never ``async`` or ``fragmentation``. Cached: the
    bytes only depend on the two arguments (docs/protocol.md "Agent design")."""
    return _kv_frame(
        FrameType.AGENT_HELLO,
        [
            (KEY_VERSION, TypedValue(DataType.STRING, SPOP_VERSION.encode())),
            (KEY_MAX_FRAME_SIZE, TypedValue(DataType.UINT32, max_frame_size)),
            (
                KEY_CAPABILITIES,
                TypedValue(DataType.STRING, CAPABILITY_PIPELINING.encode() if pipelining else b""),
            ),
        ],
    )


def encode_haproxy_hello(
    *,
    supported_versions: str = SPOP_VERSION,
    max_frame_size: int = 16380,
    capabilities: str = CAPABILITY_PIPELINING,
    engine_id: str | None = None,
    healthcheck: bool = False,
) -> bytes:
    """HAPROXY-HELLO with HAProxy's key order (docs/protocol.md "HELLO keys"); for test peers."""
    items = [
        (KEY_SUPPORTED_VERSIONS, TypedValue(DataType.STRING, supported_versions.encode())),
        (KEY_MAX_FRAME_SIZE, TypedValue(DataType.UINT32, max_frame_size)),
        (KEY_CAPABILITIES, TypedValue(DataType.STRING, capabilities.encode())),
    ]
    if engine_id is not None:
        items.append((KEY_ENGINE_ID, TypedValue(DataType.STRING, engine_id.encode())))
    if healthcheck:
        items.append((KEY_HEALTHCHECK, TypedValue(DataType.BOOL, True)))
    return _kv_frame(FrameType.HAPROXY_HELLO, items)


def _disconnect(frame_type: FrameType, status: int, message: str | bytes) -> bytes:
    text = message.encode("utf-8") if isinstance(message, str) else message
    return _kv_frame(
        frame_type,
        [
            (KEY_STATUS_CODE, TypedValue(DataType.UINT32, int(status))),
            (KEY_MESSAGE, TypedValue(DataType.STRING, text[:MAX_DISCONNECT_MESSAGE])),
        ],
    )


def encode_agent_disconnect(status: int, message: str | bytes) -> bytes:
    """AGENT-DISCONNECT; the message is cut to 255 bytes (docs/protocol.md "Disconnect")."""
    return _disconnect(FrameType.AGENT_DISCONNECT, status, message)


def encode_haproxy_disconnect(status: int, message: str | bytes) -> bytes:
    return _disconnect(FrameType.HAPROXY_DISCONNECT, status, message)
