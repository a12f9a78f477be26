# The compiled NOTIFY decoder and ACK encoder (native/spop_fast.c); used through
# coraza_spoa_py/spop_native.py.
from collections.abc import Callable, Sequence

from coraza_spoa_py.engine.matches import Record
from coraza_spoa_py.messages import RequestMessage, ResponseMessage
from coraza_spoa_py.spop.events import Action, DataType, Message, Notify

def setup(
    arg: type,
    message: type,
    notify: type,
    data_type: type[DataType],
    ipv4_factory: Callable[[bytes], object],
    ipv6_factory: Callable[[bytes], object],
) -> None: ...
def decode_messages(payload: memoryview | bytes) -> tuple[Message, ...] | None: ...
def next_notify(
    buffer: bytes | bytearray, offset: int, frame_limit: int
) -> tuple[Notify, int] | None: ...
def setup_actions(set_var: type, unset_var: type) -> None: ...
def encode_ack(stream_id: int, frame_id: int, actions: Sequence[Action]) -> bytes | None: ...
def pack_text_header_block(block: bytes) -> bytes | None: ...
def pack_binary_header_block(block: bytes) -> bytes | None: ...
def read_rule_records(buffer: bytes | memoryview) -> list[Record] | None: ...
def setup_messages(
    arg: type,
    message: type,
    data_type: type[DataType],
    request_info: type,
    response_info: type,
    request_message: type,
    response_message: type,
    header_records: type,
    ipv4: type,
    ipv6: type,
) -> None: ...
def read_request(message: Message, new_id: Callable[[], str]) -> RequestMessage | None: ...
def read_response(message: Message) -> ResponseMessage | None: ...
