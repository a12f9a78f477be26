"""The arguments of ``coraza-req`` / ``coraza-res`` messages, read into ``RequestInfo`` /
``ResponseInfo`` (docs/compatibility.md "Messages and arguments").

Arguments are looked up by NAME, in any order; unknown names are ignored. Types are accepted as
HAProxy really sends them (docs/protocol.md "What HAProxy sends", docs/protocol.md "What HAProxy
sends"): any integer type for ports and status, STRING or BINARY for text, IPV4/IPV6 for addresses
(IPv4-mapped IPv6 is unmapped), NULL for an absent sample. Anything else raises
``MalformedArgumentError`` (error 1001).

The two parse functions run in C (``native/spop_fast.c`` ``read_request``/``read_response``)
when the compiled module is there and the message has the shapes HAProxy sends; the Python
functions below stay the reference: every message the C code leaves is parsed by them, and every
error is theirs (docs/performance.md change 49).

Pure: no logging, no engine, no I/O; the id generator is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from coraza_spoa_py.header_blocks import (
    HeaderBlockError,
    HeaderRecords,
    binary_header_records,
    text_header_records,
)
from coraza_spoa_py.models import Header, IPAddress, RequestInfo, ResponseInfo, value_record
from coraza_spoa_py.spop.events import Arg, DataType, Message

try:
    from coraza_spoa_py import _spop_fast
except ImportError:  # pragma: no cover (the build is part of make install)
    _spop_fast = None  # type: ignore[assignment]

# argument names of coraza-spoa's shipped coraza.cfg (docs/compatibility.md "Messages and
# arguments")
ARG_APP = "app"
ARG_ID = "id"
ARG_SRC_IP = "src-ip"
ARG_SRC_PORT = "src-port"
ARG_DST_IP = "dst-ip"
ARG_DST_PORT = "dst-port"
ARG_METHOD = "method"
ARG_PATH = "path"
ARG_QUERY = "query"
ARG_URL = "url"
ARG_VERSION = "version"
ARG_HEADERS = "headers"
ARG_BODY = "body"
# ours: HAProxy's req.body_size, so that a body cut by HAProxy's buffer is known as such
ARG_BODY_SIZE = "body-size"
ARG_STATUS = "status"
ARG_EXPORT_RULE_IDS = "exportRuleIDs"
ARG_DETECT_ONLY = "detect-only"

REQUEST_ARGS = frozenset(
    {
        ARG_APP, ARG_ID, ARG_SRC_IP, ARG_SRC_PORT, ARG_DST_IP, ARG_DST_PORT, ARG_METHOD,
        ARG_PATH, ARG_QUERY, ARG_VERSION, ARG_HEADERS, ARG_BODY, ARG_EXPORT_RULE_IDS,
        ARG_DETECT_ONLY, ARG_URL, ARG_BODY_SIZE,
    }
)  # fmt: skip
RESPONSE_ARGS = frozenset(
    {
        ARG_APP, ARG_ID, ARG_VERSION, ARG_STATUS, ARG_HEADERS, ARG_BODY, ARG_EXPORT_RULE_IDS,
        ARG_DETECT_ONLY,
    }
)  # fmt: skip

_TEXT_TYPES = frozenset({DataType.STRING, DataType.BINARY})
_INTEGER_TYPES = frozenset({DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64})
_ADDRESS_TYPES = frozenset({DataType.IPV4, DataType.IPV6})
# a tuple, not ``IPv4Address | IPv6Address``: that expression builds a union object per call
_ADDRESS_CLASSES = (IPv4Address, IPv6Address)
_HTTP_VERSION_PREFIX = b"HTTP/"
_MAX_PORT = 65_535
# req.body_size is a signed 64-bit sample (docs/protocol.md "What HAProxy sends")
_MAX_BODY_SIZE = 2**63 - 1


class MalformedArgumentError(ValueError):
    """An argument has a type or value we cannot use (error 1001)."""


@value_record
class RequestMessage:
    request: RequestInfo
    export_rule_ids: bool = False
    detect_only: bool = False
    id_generated: bool = False


@value_record
class ResponseMessage:
    response: ResponseInfo
    export_rule_ids: bool = False
    detect_only: bool = False


if _spop_fast is not None:
    _spop_fast.setup_messages(
        Arg, Message, DataType, RequestInfo, ResponseInfo, RequestMessage, ResponseMessage,
        HeaderRecords, IPv4Address, IPv6Address,
    )  # fmt: skip
    _native_read_request = _spop_fast.read_request
    _native_read_response = _spop_fast.read_response
else:  # pragma: no cover
    _native_read_request = _native_read_response = None


def _wrong_type(arg: Arg, expected: str) -> MalformedArgumentError:
    return MalformedArgumentError(
        f"argument {arg.name!r}: expected {expected}, got {arg.type.name}"
    )


def args_by_name(message: Message) -> dict[str, Arg]:
    # The first argument of a name wins; HAProxy sends each configured name once.
    found: dict[str, Arg] = {}
    for arg in message.args:
        found.setdefault(arg.name, arg)
    return found


def unknown_arg_names(message: Message, known: frozenset[str]) -> list[str]:
    return [arg.name for arg in message.args if arg.name not in known]


def text_arg(arg: Arg | None) -> bytes | None:
    """STRING/BINARY -> bytes; absent or NULL -> None."""
    if arg is None or arg.type is DataType.NULL:
        return None
    if arg.type in _TEXT_TYPES and isinstance(arg.value, bytes):
        return arg.value
    raise _wrong_type(arg, "a string")


def transaction_id_arg(arg: Arg | None) -> bytes | None:
    """The ``id`` argument that can find a transaction: a non-empty STRING/BINARY; anything
    else (absent, NULL, empty, another type) is no id, never an error."""
    if arg is None or arg.type not in _TEXT_TYPES or not isinstance(arg.value, bytes):
        return None
    return arg.value or None


def message_transaction_id(message: Message) -> bytes | None:
    """``transaction_id_arg`` of the message's first ``id``, without building the by-name
    mapping (the worker router asks it of every message)."""
    return transaction_id_arg(next((a for a in message.args if a.name == ARG_ID), None))


def app_name_arg(arg: Arg | None) -> str | None:
    """The ``app`` argument; like coraza-spoa, a non-string value counts as absent."""
    if arg is None or arg.type not in _TEXT_TYPES or not isinstance(arg.value, bytes):
        return None
    return arg.value.decode("latin-1") or None


def _int_arg(arg: Arg | None, *, low: int, high: int) -> int | None:
    if arg is None or arg.type is DataType.NULL:
        return None
    # BOOL is an int in Python: check the SPOP type, not the Python type
    if arg.type not in _INTEGER_TYPES or not isinstance(arg.value, int):
        raise _wrong_type(arg, "an integer")
    if not low <= arg.value <= high:
        raise MalformedArgumentError(f"argument {arg.name!r}: {arg.value} is out of range")
    return arg.value


def _bool_arg(arg: Arg | None) -> bool:
    if arg is None or arg.type is DataType.NULL:
        return False
    if arg.type is DataType.BOOL or arg.type in _INTEGER_TYPES:
        return bool(arg.value)
    raise _wrong_type(arg, "a boolean")


def _address_arg(arg: Arg | None) -> IPAddress | None:
    if arg is None or arg.type is DataType.NULL:
        return None  # unix-socket clients have no address (docs/protocol.md "What HAProxy sends")
    address: IPAddress
    if arg.type in _ADDRESS_TYPES and isinstance(arg.value, _ADDRESS_CLASSES):
        address = arg.value
    elif arg.type in _TEXT_TYPES and isinstance(arg.value, bytes):
        try:
            address = ip_address(arg.value.decode("ascii").strip())
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise MalformedArgumentError(f"argument {arg.name!r}: not an IP address") from exc
    else:
        raise _wrong_type(arg, "an address")
    # docs/protocol.md "What HAProxy sends": a v4 client on a dual-stack listener arrives as
    # ::ffff:a.b.c.d
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _headers_arg(arg: Arg | None) -> Sequence[Header]:
    # docs/compatibility.md "Errors": the text block (req.hdrs) or the binary one (req.hdrs_bin),
    # chosen by the SPOP type. NULL (an unset variable, or a binary block that did not fit HAProxy's
    # buffer, docs/protocol.md "What HAProxy sends") is treated like an absent argument.
    if arg is None or arg.type is DataType.NULL:
        return ()
    try:
        if arg.type is DataType.STRING and isinstance(arg.value, bytes):
            return text_header_records(arg.value)
        if arg.type is DataType.BINARY and isinstance(arg.value, bytes):
            return binary_header_records(arg.value)
    except HeaderBlockError as exc:
        raise MalformedArgumentError(f"argument {arg.name!r}: {exc}") from exc
    raise _wrong_type(arg, "a header block")


def _version_arg(arg: Arg | None) -> bytes | None:
    version = text_arg(arg)
    if version is not None and version.startswith(_HTTP_VERSION_PREFIX):
        version = version[len(_HTTP_VERSION_PREFIX) :]
    return version or None


def parse_request_message(
    message: Message, new_id: Callable[[], str], args: Mapping[str, Arg] | None = None
) -> RequestMessage:
    """Read a ``coraza-req`` message; an absent or empty ``id`` gets ``new_id()``.

    ``args``: ``args_by_name(message)`` when the caller already has it (once per message).
    In C when it can (the module's docstring), else ``python_parse_request_message``."""
    if _native_read_request is not None:
        parsed: RequestMessage | None = _native_read_request(message, new_id)
        if parsed is not None:
            return parsed
    return python_parse_request_message(message, new_id, args)


def python_parse_request_message(
    message: Message, new_id: Callable[[], str], args: Mapping[str, Arg] | None = None
) -> RequestMessage:
    """``parse_request_message``'s reference, in Python."""
    if args is None:
        args = args_by_name(message)
    given_id = text_arg(args.get(ARG_ID))
    transaction_id = given_id.decode("latin-1") if given_id else new_id()
    request = request_info(args, transaction_id)
    return RequestMessage(
        request=request,
        export_rule_ids=_bool_arg(args.get(ARG_EXPORT_RULE_IDS)),
        detect_only=_bool_arg(args.get(ARG_DETECT_ONLY)),
        id_generated=not given_id,
    )


def parse_response_message(
    message: Message, args: Mapping[str, Arg] | None = None
) -> ResponseMessage:
    """Read a ``coraza-res`` message. An empty ``transaction_id`` means no ``id`` was sent.
    In C when it can (the module's docstring), else ``python_parse_response_message``."""
    if _native_read_response is not None:
        parsed: ResponseMessage | None = _native_read_response(message)
        if parsed is not None:
            return parsed
    return python_parse_response_message(message, args)


def python_parse_response_message(
    message: Message, args: Mapping[str, Arg] | None = None
) -> ResponseMessage:
    """``parse_response_message``'s reference, in Python."""
    if args is None:
        args = args_by_name(message)
    given_id = text_arg(args.get(ARG_ID))
    response = ResponseInfo(
        transaction_id=given_id.decode("latin-1") if given_id else "",
        status=_int_arg(args.get(ARG_STATUS), low=0, high=999) or 0,
        version=_version_arg(args.get(ARG_VERSION)) or b"1.1",
        headers=_headers_arg(args.get(ARG_HEADERS)),
        body=text_arg(args.get(ARG_BODY)) or b"",
    )
    return ResponseMessage(
        response=response,
        export_rule_ids=_bool_arg(args.get(ARG_EXPORT_RULE_IDS)),
        detect_only=_bool_arg(args.get(ARG_DETECT_ONLY)),
    )


def request_info(
    args: Mapping[str, Arg], transaction_id: str, *, orphan: bool = False
) -> RequestInfo:
    """The request a ``coraza-req`` describes. ``orphan``: the request-side facts of a
    ``coraza-res`` whose transaction is not here: method, path, query and the addresses when
    the message carries them, else ``GET /`` from nowhere; never the request's headers, body,
    version or target: the message's ``headers``/``body``/``version`` are the response's."""
    return RequestInfo(
        transaction_id=transaction_id,
        method=text_arg(args.get(ARG_METHOD)) or b"GET",
        # NULL path: HAProxy had none (`*`, CONNECT); the engine still needs a URI
        path=text_arg(args.get(ARG_PATH)) or b"/",
        query=text_arg(args.get(ARG_QUERY)),
        target=None if orphan else text_arg(args.get(ARG_URL)),
        version=b"1.1" if orphan else _version_arg(args.get(ARG_VERSION)) or b"1.1",
        headers=() if orphan else _headers_arg(args.get(ARG_HEADERS)),
        body=b"" if orphan else text_arg(args.get(ARG_BODY)) or b"",
        src_ip=_address_arg(args.get(ARG_SRC_IP)),
        src_port=_int_arg(args.get(ARG_SRC_PORT), low=0, high=_MAX_PORT) or 0,
        dst_ip=_address_arg(args.get(ARG_DST_IP)),
        dst_port=_int_arg(args.get(ARG_DST_PORT), low=0, high=_MAX_PORT) or 0,
        declared_body_size=(
            None if orphan else _int_arg(args.get(ARG_BODY_SIZE), low=0, high=_MAX_BODY_SIZE)
        ),
    )
