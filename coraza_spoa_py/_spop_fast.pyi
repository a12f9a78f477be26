# The compiled NOTIFY decoder and ACK encoder (native/spop_fast.c); used through
# coraza_spoa_py/spop_native.py.
from collections.abc import Callable, Sequence

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

# one rule-match record of msc_glue_rm.cc (engine/matches.py Record)
_Record = tuple[
    int, int, int, int, int, int, int, str, str, str, str, str, str, str, str, tuple[str, ...]
]

def read_rule_records(buffer: bytes | memoryview) -> list[_Record] | None: ...
