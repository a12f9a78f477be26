# Types of the compiled binding (native/build.py): cffi's FFI and the library object.
from typing import Any

ffi: Any
lib: Any
