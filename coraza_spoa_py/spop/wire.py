"""SPOP primitive encodings: the "peers" varint, typed data, untyped strings and KV lists.

Everything here is a pure function of bytes, plus ``Reader``, a cursor over a ``memoryview``
whose every read checks the bytes left (Python slicing would silently truncate;
docs/development.md "Bounded input"). It knows nothing about frames or connection state;
``frames`` builds on it.

Decoding errors raise ``SpopError(StatusCode.INVALID)``: a malformed field means an invalid
frame (docs/protocol.md "Disconnect"). Encoding a value that cannot be represented raises
``TypeError`` or ``ValueError``: that is a bug in the caller, not a protocol event.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from coraza_spoa_py.spop.errors import SpopError, StatusCode
from coraza_spoa_py.spop.events import DataType, TypedValue, Value

# A 64-bit value needs at most 10 bytes (docs/protocol.md "Varints"); HAProxy's decoder has no
# cap, ours does so that crafted input cannot make it loop (docs/protocol.md "Bounded varints").
MAX_VARINT_BYTES = 10
UINT64_LIMIT = 1 << 64
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

# BOOL carries its value in the flag nibble; HAProxy tests (byte & 0xF0) == 0x10
# (docs/protocol.md "Typed data")
BOOL_TRUE_BYTE = 0x11
BOOL_FALSE_BYTE = 0x01
TYPE_MASK = 0x0F

_IPV4_SIZE = 4
_IPV6_SIZE = 16
_SIGNED_TYPES = frozenset({DataType.INT32, DataType.INT64})
_INTEGER_TYPES = frozenset({DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64})
# Indexed by the type byte seen on the wire; None marks a byte we refuse (see Reader.typed).
_TYPE_BY_BYTE: tuple[DataType | None, ...] = tuple(
    DataType(b)
    if b <= DataType.BINARY and b != DataType.BOOL
    else (DataType.BOOL if b in (BOOL_TRUE_BYTE, BOOL_FALSE_BYTE) else None)
    for b in range(256)
)
# one-byte varints are by far the most common (lengths, small ints): build them once
_SMALL_VARINTS: tuple[bytes, ...] = tuple(bytes((v,)) for v in range(240))
_NULL_BYTES = bytes((DataType.NULL,))
_TRUE_BYTES = bytes((BOOL_TRUE_BYTE,))
_FALSE_BYTES = bytes((BOOL_FALSE_BYTE,))


def invalid_frame(detail: str) -> SpopError:
    """The error for any malformed field: an invalid frame, status 4 (docs/protocol.md
    "Disconnect")."""
    return SpopError(StatusCode.INVALID, f"invalid frame received: {detail}")


# ---- varint (docs/protocol.md "Varints") ----------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode an unsigned 64-bit integer; a negative one is sent as its two's complement."""
    if value < 240:
        if value >= 0:
            return _SMALL_VARINTS[value]
        if value < INT64_MIN:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        value += UINT64_LIMIT
    elif value >= UINT64_LIMIT:
        raise ValueError(f"integer {value} does not fit in 64 bits")
    out = bytearray(((value & 0xFF) | 0xF0,))
    value = (value - 240) >> 4
    while value >= 128:
        out.append((value & 0xFF) | 0x80)
        value = (value - 128) >> 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at ``pos`` of ``data``; return ``(value, next_pos)``."""
    reader = Reader(data, pos)
    value = reader.varint()
    return value, reader.pos


def to_signed64(value: int) -> int:
    """A decoded uint64 read as signed, as HAProxy does for INT32/INT64 (docs/protocol.md
    "Varints")."""
    return value - UINT64_LIMIT if value > INT64_MAX else value


# ---- reading -------------------------------------------------------------------------------


class Reader:
    """A bounds-checked cursor over ``buf[pos:end]``. Every read raises ``SpopError(INVALID)``
    rather than run past ``end``."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = data if isinstance(data, memoryview) else memoryview(data)
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.end

    def byte(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise invalid_frame("truncated field")
        self.pos = pos + 1
        return self.buf[pos]

    def take(self, size: int) -> memoryview:
        pos = self.pos
        stop = pos + size
        if stop > self.end:
            raise invalid_frame(f"length {size} runs past the end of the frame")
        self.pos = stop
        return self.buf[pos:stop]

    def varint(self) -> int:
        buf, pos, end = self.buf, self.pos, self.end
        if pos >= end:
            raise invalid_frame("truncated varint")
        first = buf[pos]
        pos += 1
        if first < 240:
            self.pos = pos
            return first
        # docs/protocol.md "Varints": the whole byte, marker bits included, is added (not LEB128)
        value = first
        shift = 4
        stop = min(end, pos + MAX_VARINT_BYTES - 1)
        while pos < stop:
            octet = buf[pos]
            pos += 1
            value += octet << shift
            if octet < 128:
                if value >= UINT64_LIMIT:
                    raise invalid_frame("varint above 2^64-1")
                self.pos = pos
                return value
            shift += 7
        if stop < end:
            raise invalid_frame(f"varint longer than {MAX_VARINT_BYTES} bytes")
        raise invalid_frame("truncated varint")

    def bytes_field(self) -> bytes:
        """An untyped string as bytes: varint length, then the bytes (docs/protocol.md "Payload
        shapes")."""
        size = self.varint()
        return bytes(self.take(size))

    def name(self) -> str:
        """An untyped string turned into ``str`` with latin-1, which cannot fail (events.py)."""
        size = self.varint()
        return str(self.take(size), "latin-1")

    def typed(self) -> tuple[DataType, Value]:
        """One TYPED-DATA (docs/protocol.md "Typed data"). Type ids 10-15 cannot be skipped
        (their length is unknown), so they are an invalid frame (docs/protocol.md "Unknown type
        ids"); so is a flag bit on anything but BOOL, which HAProxy never sends and which we
        could not re-encode."""
        type_byte = self.byte()
        data_type = _TYPE_BY_BYTE[type_byte]
        if data_type is None:
            raise invalid_frame(f"unsupported typed-data byte 0x{type_byte:02x}")
        if data_type is DataType.STRING or data_type is DataType.BINARY:
            return data_type, self.bytes_field()
        if data_type in _INTEGER_TYPES:
            value = self.varint()
            if data_type in _SIGNED_TYPES:
                value = to_signed64(value)
            return data_type, value
        if data_type is DataType.IPV4:
            return data_type, IPv4Address(bytes(self.take(_IPV4_SIZE)))
        if data_type is DataType.IPV6:
            return data_type, IPv6Address(bytes(self.take(_IPV6_SIZE)))
        if data_type is DataType.BOOL:
            return data_type, type_byte == BOOL_TRUE_BYTE
        return data_type, None

    def kv_list(self) -> list[tuple[str, TypedValue]]:
        """KV-LIST: name/typed-value pairs up to the end of the reader (docs/protocol.md
        "Payload shapes")."""
        items: list[tuple[str, TypedValue]] = []
        while self.pos < self.end:
            key = self.name()
            data_type, value = self.typed()
            items.append((key, TypedValue(data_type, value)))
        return items


def decode_typed(data: bytes | memoryview) -> TypedValue:
    """Decode exactly one TYPED-DATA filling ``data`` (trailing bytes are invalid)."""
    reader = Reader(data)
    data_type, value = reader.typed()
    if not reader.at_end():
        raise invalid_frame("trailing bytes after typed data")
    return TypedValue(data_type, value)


def decode_kv_list(data: bytes | memoryview) -> list[tuple[str, TypedValue]]:
    return Reader(data).kv_list()


# ---- writing -------------------------------------------------------------------------------


def encode_bytes_field(data: bytes) -> bytes:
    """An untyped string: varint length + bytes (docs/protocol.md "Payload shapes")."""
    return encode_varint(len(data)) + data


def encode_name(name: str) -> bytes:
    """An untyped string from a ``str``, latin-1 so that decoding gives it back exactly."""
    return encode_bytes_field(name.encode("latin-1"))


def _as_bytes(value: object, data_type: DataType) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{DataType(data_type).name} needs bytes or str, not {type(value).__name__}")


def encode_typed(data_type: DataType, value: object) -> bytes:
    """Encode a value as the given SPOP type. ``str`` is accepted for STRING and BINARY (utf-8).
    Raises TypeError/ValueError when the value does not fit the type."""
    if data_type == DataType.STRING or data_type == DataType.BINARY:
        payload = _as_bytes(value, data_type)
        return bytes((data_type,)) + encode_varint(len(payload)) + payload
    if data_type in _INTEGER_TYPES:
        if not isinstance(value, int):
            raise TypeError(f"{DataType(data_type).name} needs an int, not {type(value).__name__}")
        low = INT64_MIN if data_type in _SIGNED_TYPES else 0
        high = INT64_MAX if data_type in _SIGNED_TYPES else UINT64_LIMIT - 1
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range for {DataType(data_type).name}")
        return bytes((data_type,)) + encode_varint(value)
    if data_type == DataType.BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"BOOL needs a bool, not {type(value).__name__}")
        # docs/protocol.md "Typed data": exactly 0x11 / 0x01
        return _TRUE_BYTES if value else _FALSE_BYTES
    if data_type == DataType.IPV4:
        if not isinstance(value, IPv4Address):
            raise TypeError(f"IPV4 needs an IPv4Address, not {type(value).__name__}")
        return bytes((DataType.IPV4,)) + value.packed
    if data_type == DataType.IPV6:
        if not isinstance(value, IPv6Address):
            raise TypeError(f"IPV6 needs an IPv6Address, not {type(value).__name__}")
        return bytes((DataType.IPV6,)) + value.packed
    if data_type != DataType.NULL:
        raise ValueError(f"unknown SPOP data type {data_type!r}")
    if value is not None:
        raise TypeError(f"NULL carries no value, got {type(value).__name__}")
    return _NULL_BYTES


def infer_type(value: object) -> DataType:
    """The SPOP type for a Python value (events.SetVar). ``bool`` is checked before ``int``
    because bool is an int subclass (docs/protocol.md "Booleans before integers")."""
    if isinstance(value, bool):
        return DataType.BOOL
    if isinstance(value, int):
        return DataType.INT64
    if isinstance(value, bytes | bytearray | memoryview):
        return DataType.BINARY
    if isinstance(value, str):
        return DataType.STRING
    if value is None:
        return DataType.NULL
    if isinstance(value, IPv4Address):
        return DataType.IPV4
    if isinstance(value, IPv6Address):
        return DataType.IPV6
    raise TypeError(f"no SPOP type for {type(value).__name__}")


def encode_value(value: object, data_type: DataType | None = None) -> bytes:
    """Encode with an explicit type, or the inferred one when ``data_type`` is None."""
    return encode_typed(infer_type(value) if data_type is None else data_type, value)


def encode_kv_list(items: Iterable[tuple[str, TypedValue]]) -> bytes:
    """KV-LIST: untyped key, typed value, repeated (docs/protocol.md "Payload shapes")."""
    out = bytearray()
    for key, typed in items:
        out += encode_name(key)
        out += encode_typed(typed.type, typed.value)
    return bytes(out)


__all__ = [
    "MAX_VARINT_BYTES",
    "Reader",
    "decode_kv_list",
    "decode_typed",
    "decode_varint",
    "encode_bytes_field",
    "encode_kv_list",
    "encode_name",
    "encode_typed",
    "encode_value",
    "encode_varint",
    "infer_type",
    "invalid_frame",
    "to_signed64",
]
