# The compiled NOTIFY decoder (native/spop_fast.c); used through coraza_spoa_py/spop_native.py.
from collections.abc import Callable

from coraza_spoa_py.spop.events import DataType, Message, Notify

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
