"""The C reader of the engine's rule-match records (native/spop_fast.c ``read_rule_records``,
through engine/matches.py) against its reference, the Python reader ``matches.read_records``:
for records the engine wrote (real CRS attacks) and records built with msc_glue.h's layout, the
same fields and the same ``RuleMatch`` list; for every buffer cut or garbled, None from C, and no
byte read past the buffer's end (the buffer ends at a page nobody may read). The Python reader
has no clean error path of its own (a cut length raises struct.error, a string past the end is
a short slice), so the two are compared where C gives records. docs/performance.md change 43."""

from __future__ import annotations

import ctypes
import mmap
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coraza_spoa_py import _spop_fast
from coraza_spoa_py import engine as waf
from coraza_spoa_py.engine import matches
from coraza_spoa_py.engine.binding import lib
from coraza_spoa_py.models import RequestInfo, RuleMatch
from coraza_spoa_py.settings import AppConfig, RulePaths

# the compiled module: not a unit test (docs/development.md "Layout")
pytestmark = pytest.mark.integration

CRS = (
    "Include @coraza.conf-recommended\n"
    "Include @crs-setup.conf.example\n"
    "Include @owasp_crs/*.conf\n"
    "SecRuleEngine {mode}\n"
)
HEADERS = ((b"host", b"example.com"), (b"user-agent", b"Mozilla/5.0 Firefox/128.0"))
ATTACKS: list[dict[str, object]] = [
    {"path": b"/", "query": b"p=/etc/passwd"},
    {"path": b"/", "query": b"q=<script>alert(1)</script>&id=1' OR '1'='1"},
    # bytes that are no UTF-8 reach data and raw: decoded with "replace" by both readers
    {"path": b"/caf\xc3\xa9/\xff", "query": b"x=\xfe\xff../../etc/shadow&" + b"\xe2\x82" * 150},
    {
        "method": b"POST",
        "path": b"/login",
        "headers": HEADERS
        + ((b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"28")),
        "body": b"user=admin' OR '1'='1&pass=x",
    },
]


@pytest.fixture(scope="module")
def engine_buffers() -> list[bytes]:
    """The record buffers ``take_records`` read while CRS judged ATTACKS, blocking and only
    logging (DetectionOnly: every phase's messages, none disruptive)."""
    buffers: list[bytes] = []
    read = matches.rule_matches

    def keep(raw: bytes, client: str, unique_id: str) -> list[tuple[RuleMatch, str]]:
        buffers.append(raw)
        return read(raw, client, unique_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matches, "rule_matches", keep)
        for mode in ("On", "DetectionOnly"):
            engine = waf.load_engine(
                AppConfig(name="crs", directives=CRS.format(mode=mode)), RulePaths()
            )
            for number, attack in enumerate(ATTACKS):
                tx = engine.new_transaction(f"tx-{number}")
                fields: dict[str, object] = {"headers": HEADERS}
                fields.update(attack)
                try:
                    tx.process_request(RequestInfo(f"tx-{number}", **fields))  # type: ignore[arg-type]
                finally:
                    tx.close()
    assert len(buffers) >= 2 * len(ATTACKS)
    return buffers


# -- records built with the layout of msc_glue.h "cs_log records" -------------------------------

HEAD = struct.Struct("<qIIIIII")


def pack_string(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


def pack_record(
    head: tuple[int, int, int, int, int, int, int], strings: list[bytes], tags: list[bytes]
) -> bytes:
    assert len(strings) == 8  # file, msg, data, rev, ver, server, uri, raw
    return (
        HEAD.pack(*head)
        + b"".join(pack_string(s) for s in strings)
        + struct.pack("<I", len(tags))
        + b"".join(pack_string(t) for t in tags)
    )


U32 = st.integers(0, 2**32 - 1)
HEADS = st.tuples(st.integers(-(2**63), 2**63 - 1), U32, U32, U32, U32, U32, U32)
# small numbers too: the ones the engine writes (severity 0..7, phase 1..5, CS_ACTION_*)
DIGIT = st.integers(0, 9)
SMALL_HEADS = st.tuples(st.integers(0, 999999), DIGIT, DIGIT, DIGIT, DIGIT, DIGIT, DIGIT)
TEXTS = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"caf\xc3\xa9", b"\xed\xa0\x80", b""]),
)
RECORDS = st.builds(
    pack_record,
    st.one_of(HEADS, SMALL_HEADS),
    st.lists(TEXTS, min_size=8, max_size=8),
    st.lists(TEXTS, max_size=5),
)


def record_ends(raw: bytes) -> list[int]:
    """Where each record of the well-formed ``raw`` ends."""
    ends, at = [], 0
    while at < len(raw):
        at += HEAD.size
        for _ in range(8):
            at += 4 + struct.unpack_from("<I", raw, at)[0]
        count = struct.unpack_from("<I", raw, at)[0]
        at += 4
        for _ in range(count):
            at += 4 + struct.unpack_from("<I", raw, at)[0]
        ends.append(at)
    return ends


# -- a buffer whose next byte cannot be read ------------------------------------------------------


class GuardedBuffer:
    """Bytes placed at the very end of a readable page, the next page mapped PROT_NONE: a read
    one byte past them faults (the test process dies) instead of passing unseen."""

    def __init__(self, size: int) -> None:
        page = mmap.PAGESIZE
        self.end = -(-size // page) * page  # the readable pages, then the guard page
        self.map = mmap.mmap(-1, self.end + page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        prot_none = 0  # PROT_NONE (mmap has no name for it)
        if libc.mprotect(address + self.end, page, prot_none) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")

    def read(self, raw: bytes) -> object:
        assert len(raw) <= self.end
        start = self.end - len(raw)
        self.map[start : self.end] = raw
        with memoryview(self.map)[start : self.end] as view:
            return _spop_fast.read_rule_records(view)


@pytest.fixture(scope="module")
def guarded() -> Iterator[GuardedBuffer]:
    # never unmapped: the ctypes view keeps the map exported, and the process ends soon
    yield GuardedBuffer(1 << 20)


# -- well-formed buffers: the same records ------------------------------------------------------


def same_records(raw: bytes) -> None:
    python = matches.read_records(raw)
    assert _spop_fast.read_rule_records(raw) == python
    assert matches.rule_matches(raw, "192.0.2.7", "tx-1") == matches.rule_matches(
        raw, "192.0.2.7", "tx-1", native=False
    )


def test_engine_records_read_alike(engine_buffers: list[bytes], guarded: GuardedBuffer) -> None:
    for raw in [*engine_buffers, b"".join(engine_buffers)]:
        same_records(raw)
        assert guarded.read(raw) == matches.read_records(raw)


def test_engine_records_hold_what_the_rules_said(engine_buffers: list[bytes]) -> None:
    """Not only equal: right. 930120 (LFI) is there with its CRS fields, the bytes that are no
    UTF-8 came out as U+FFFD, and each blocking run has one disruptive match, 949110 (deny)."""
    found = [m for raw in engine_buffers for m in matches.rule_matches(raw, "c", "tx")]
    lfi = next(match for match, _ in found if match.rule_id == 930120)
    assert lfi.severity == "critical" and lfi.severity_id == 2
    assert lfi.phase == "request-body" and lfi.phase_id == 2
    assert lfi.version.startswith("OWASP_CRS/3.3") and lfi.file.endswith("LFI.conf")
    assert "attack-lfi" in lfi.tags and lfi.maturity == "0" and lfi.unique_id == "tx"
    assert any(match.data.endswith("\ufffd\ufffd../../etc/shadow") for match, _ in found)
    assert "/caf\u00e9/\ufffd" in {match.uri for match, _ in found}
    disruptive = [(match.rule_id, action) for match, action in found if match.disruptive]
    assert disruptive == [(949110, "deny")] * len(ATTACKS)


@given(st.lists(RECORDS, max_size=4))
def test_generated_records_read_alike(records: list[bytes]) -> None:
    same_records(b"".join(records))


def test_a_generated_record_decodes_to_its_fields() -> None:
    """The reference itself, against values written here."""
    raw = pack_record(
        (-5, 12, 2, 9, 3, 4, lib.CS_ACTION_DROP),
        [b"f.conf", b"msg", b"d\xff", b"rev", b"ver", b"10.0.0.1", b"/u", b"line"],
        [b"t1", b"caf\xc3\xa9"],
    )
    strings = ("f.conf", "msg", "d\ufffd", "rev", "ver", "10.0.0.1", "/u", "line")
    expected = (-5, 12, 2, 9, 3, 4, lib.CS_ACTION_DROP, *strings, ("t1", "café"))
    assert matches.read_records(raw) == [expected]
    assert _spop_fast.read_rule_records(raw) == [expected]
    [(match, action)] = matches.rule_matches(raw, "192.0.2.7", "tx-9")
    assert action == "drop"
    assert match == RuleMatch(
        rule_id=-5,
        msg="msg",
        data="d\ufffd",
        severity="",  # 9 is no SecLang severity
        severity_id=-1,
        file="f.conf",
        line=12,
        revision="rev",
        version="ver",
        maturity="3",
        accuracy="4",
        tags=("t1", "café"),
        server="10.0.0.1",
        uri="/u",
        unique_id="tx-9",
        client="192.0.2.7",
        disruptive=True,
        phase_id=2,
        phase="request-body",
        raw="line",
    )


# -- cut and garbled buffers: None, and no read past the end --------------------------------------


def test_every_cut_of_engine_records_is_refused(
    engine_buffers: list[bytes], guarded: GuardedBuffer
) -> None:
    raw = b"".join(engine_buffers[:3])
    ends = set(record_ends(raw))
    for size in range(len(raw)):
        cut = raw[:size]
        if size in ends or size == 0:  # a whole number of records: well formed
            assert guarded.read(cut) == matches.read_records(cut)
        else:
            assert guarded.read(cut) is None, size


def test_garbled_lengths_are_refused(engine_buffers: list[bytes], guarded: GuardedBuffer) -> None:
    """Each length and the tag count of a real record set past the end (and to 2^32-1)."""
    record, length_offsets = b"", list[int]()
    for raw in engine_buffers:
        record = raw[: record_ends(raw)[0]]
        at, length_offsets = HEAD.size, []
        for _ in range(8):  # file .. raw
            length_offsets.append(at)
            at += 4 + struct.unpack_from("<I", record, at)[0]
        length_offsets.append(at)  # the tag count
        count = struct.unpack_from("<I", record, at)[0]
        at += 4
        for _ in range(count):
            length_offsets.append(at)
            at += 4 + struct.unpack_from("<I", record, at)[0]
        assert at == len(record)
        if count:  # one with tags
            break
    assert len(length_offsets) > 9
    for offset in length_offsets:
        for value in (len(record) - offset - 3, len(record), 2**31, 2**32 - 1):
            garbled = bytearray(record)
            struct.pack_into("<I", garbled, offset, value)
            assert guarded.read(bytes(garbled)) is None, (offset, value)


@given(st.lists(RECORDS, min_size=1, max_size=3), st.data())
def test_cut_generated_records_are_refused(records: list[bytes], data: st.DataObject) -> None:
    raw = b"".join(records)
    size = data.draw(st.integers(0, len(raw) - 1))
    ends = {0, *record_ends(raw)}
    result = _spop_fast.read_rule_records(raw[:size])
    assert result == (matches.read_records(raw[:size]) if size in ends else None)


@given(st.binary(max_size=200))
def test_any_bytes_are_records_read_alike_or_refused(raw: bytes) -> None:
    """C gives records only where every read was inside: then the Python reader, whose reads
    are then inside too, gives the same."""
    result = _spop_fast.read_rule_records(raw)
    if result is not None:
        assert result == matches.read_records(raw)


def test_any_bytes_never_read_past_the_end(guarded: GuardedBuffer) -> None:
    """Pseudo-random buffers and every cut of them, at the page's end."""
    generator = random.Random(43)
    for _ in range(200):
        raw = generator.randbytes(generator.randrange(0, 120))
        for size in range(len(raw) + 1):
            guarded.read(raw[:size])


def test_other_inputs_raise() -> None:
    with pytest.raises(TypeError):
        _spop_fast.read_rule_records("text")  # type: ignore[arg-type]
    assert _spop_fast.read_rule_records(b"") == []


# -- the extension missing: the Python reader ---------------------------------------------------


def test_without_the_extension_the_python_reader_reads(
    engine_buffers: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    native = [matches.rule_matches(raw, "c", "tx") for raw in engine_buffers]
    monkeypatch.setattr(matches, "_read_native", None)
    assert [matches.rule_matches(raw, "c", "tx") for raw in engine_buffers] == native
    assert all(native)


def test_the_module_imports_without_the_extension() -> None:
    """engine/matches.py's import guard: with ``_spop_fast`` not importable, it still loads and
    reads records (in a fresh interpreter, so that this one keeps its modules)."""
    script = (
        "import sys; sys.modules['coraza_spoa_py._spop_fast'] = None\n"
        "from coraza_spoa_py.engine import matches\n"
        "assert matches._read_native is None\n"
        "raw = bytes.fromhex(sys.argv[1])\n"
        "print(matches.rule_matches(raw, 'c', 'tx')[0][0].tags)\n"
    )
    raw = pack_record((7, 1, 1, 2, 0, 0, 0), [b"f", b"m", b"", b"", b"", b"", b"/", b"r"], [b"t"])
    done = subprocess.run(
        [sys.executable, "-c", script, raw.hex()],
        cwd=Path(__file__).parents[2],  # this tree's coraza_spoa_py
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "('t',)"
