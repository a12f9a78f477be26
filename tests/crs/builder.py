"""Turn a ``Stage`` into the exact bytes the reference tool would put on the wire.

Two tools, two sets of quirks, copied on purpose (a WAF test is only comparable with the CRS
project's results if the request is the same byte for byte):

- **ftw 1.x** (legacy format; read from ftw 1.3.0's ``ruleset.Input`` and ``http.HttpUA``):
  headers in file order; when there is data and no ``stop_magic``, ``Content-Type:
  application/x-www-form-urlencoded`` is appended if the key ``Content-Type`` (case-sensitive)
  is absent, the data is re-encoded with ``parse_qsl``/``urlencode`` only when that header is
  exactly the form type and the data does not look escaped already, and ``Content-Length`` is
  appended as ``len(data)`` counted in *characters*. The body is encoded in the charset named
  by the Content-Type. No ``Connection: close`` is added. ``raw_request`` goes through
  ``unicode_escape``; ``encoded_request`` is base64.
- **go-ftw** (CRS 4 format; docs/crs.md "Test file formats"): headers sorted by name; with
autocomplete on, the
  form Content-Type is added when absent and form data is URL-encoded (Go's ``url.Values``
  encoding: keys sorted), multipart ``\\n`` becomes ``\\r\\n``, ``Connection: close`` is added,
  and ``Content-Length`` (bytes) when there is data or the method is POST/PUT/PATCH/DELETE.
  The ``{{ "x" | repeat N }}`` template is expanded.

Pure: no sockets, no judging.
"""

from __future__ import annotations

import base64
import encodings.aliases
import re
from urllib.parse import parse_qsl, quote_plus, unquote, urlencode

from tests.crs.loader import Stage, StageInput

CRLF = "\r\n"
FORM_TYPE = "application/x-www-form-urlencoded"


class BuildError(Exception):
    """The reference tool itself fails on this stage (e.g. data the charset cannot encode)."""


def build_request(stage: Stage) -> bytes:
    if stage.format == "legacy":
        return build_ftw1_request(stage.input)
    return build_goftw_request(stage.input)


# ----------------------------------------------------------------------------- ftw 1.x

# ftw 1.x http.HttpUA.build_request: the charset parameter of Content-Type picks the body codec
_FTW1_CHARSET = re.compile(r"\;\s{0,1}?charset\=(.*?)(?:$|\;|\s)")
_PYTHON_CODECS = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())


def build_ftw1_request(given: StageInput) -> bytes:
    if given.encoded_request is not None:
        return base64.b64decode(given.encoded_request)
    if given.raw_request is not None:
        # ftw 1.x: "We do this regardless of magic" — escapes like \r\n written in the YAML
        # become the bytes; characters above 0x7f come out UTF-8 encoded twice, as in ftw.
        return given.raw_request.encode("utf-8").decode("unicode_escape").encode("utf-8")

    headers: dict[str, object] = dict(given.headers)
    data = given.data
    magic = given.autocomplete
    if data != "":
        if "Content-Type" not in headers and magic:
            headers["Content-Type"] = FORM_TYPE
        if headers.get("Content-Type") == FORM_TYPE and magic and unquote(data) == data:
            pairs = parse_qsl(data)
            if pairs:
                data = urlencode(pairs)
        if "Content-Length" not in headers and magic:
            headers["Content-Length"] = len(data)  # characters, not bytes (ftw 1.x does so)

    # ftw fills a template by successive str.replace calls; copy that, quirks included
    request = "#method# #uri##version#" + CRLF + "#headers#" + CRLF + "#data#"
    request = request.replace("#method#", given.method)
    request = request.replace("#uri#", given.uri + " ")
    request = request.replace("#version#", given.version)
    request = request.replace(
        "#headers#", "".join(f"{name}: {value}{CRLF}" for name, value in headers.items())
    )
    request = request.replace("#data#", _ftw1_body_text(data, headers, magic))
    return request.encode("utf-8")


def _ftw1_body_text(data: str, headers: dict[str, object], magic: bool) -> str:
    if data == "":
        return ""
    encoding = "utf-8"
    content_type = headers.get("Content-Type")
    if isinstance(content_type, str) and magic:
        match = _FTW1_CHARSET.search(content_type)
        if match:
            choice = match.group(1).replace("-", "_").lower()
            if choice in _PYTHON_CODECS:
                encoding = choice
    try:
        # ftw encodes in the charset, then turns the bytes back into str as UTF-8
        return data.encode(encoding, "strict").decode("utf-8")
    except UnicodeError as exc:
        raise BuildError(f"ftw 1.x cannot encode the data as {encoding}: {exc}") from exc


# ----------------------------------------------------------------------------- go-ftw

_REPEAT_TEMPLATE = re.compile(r'\{\{\s*"((?:[^"\\]|\\.)*)"\s*\|\s*repeat\s+(\d+)\s*\}\}')
_BODY_METHODS = re.compile(r"^(POST|PUT|PATCH|DELETE)$")


def expand_templates(text: str) -> str:
    """go-ftw runs ``data`` through Go templates with sprig; CRS uses only ``repeat``."""
    return _REPEAT_TEMPLATE.sub(lambda m: m.group(1) * int(m.group(2)), text)


def goftw_form_encode(data: str) -> str:
    """Go's ``url.ParseQuery`` + ``Values.Encode()``: blank values kept, keys sorted."""
    grouped: dict[str, list[str]] = {}
    for part in data.split("&"):
        if part == "":
            continue
        key, _, value = part.partition("=")
        grouped.setdefault(unquote(key.replace("+", " ")), []).append(
            unquote(value.replace("+", " "))
        )
    return "&".join(
        f"{quote_plus(key, safe='')}={quote_plus(value, safe='')}"
        for key in sorted(grouped)
        for value in grouped[key]
    )


def build_goftw_request(given: StageInput) -> bytes:
    if given.encoded_request is not None:
        return base64.b64decode(given.encoded_request)
    if given.raw_request is not None:
        return given.raw_request.encode("utf-8")

    headers = {name: str(value) for name, value in given.headers}
    data = expand_templates(given.data)
    if given.autocomplete:
        lower = {name.lower(): name for name in headers}
        if data and "content-type" not in lower:
            headers["Content-Type"] = FORM_TYPE
            lower["content-type"] = "Content-Type"
        content_type = headers.get(lower.get("content-type", ""), "")
        if data and content_type == FORM_TYPE and unquote(data) == data:
            data = goftw_form_encode(data)
        if "multipart/form-data" in content_type:
            data = data.replace("\n", "\r\n")
        if "connection" not in lower:
            headers["Connection"] = "close"
        body_length = len(data.encode("utf-8"))
        if "content-length" not in lower and (data or _BODY_METHODS.match(given.method)):
            headers["Content-Length"] = str(body_length)

    head = f"{given.method} {given.uri} {given.version}{CRLF}"
    head += "".join(f"{name}: {headers[name]}{CRLF}" for name in sorted(headers))
    return (head + CRLF).encode("utf-8") + data.encode("utf-8")
