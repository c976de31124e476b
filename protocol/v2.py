"""Open Inference Protocol (V2) request/response bodies, JSON and binary tensor extension.

Binary extension: the JSON header comes first, its length in the
`Inference-Header-Content-Length` HTTP header; raw tensor bytes follow in
declaration order, one tensor per input/output whose `parameters.binary_data_size`
says how many bytes it takes. BYTES tensors are a sequence of elements, each a
4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

NUMERIC_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


DEFAULT_MAX_ELEMENTS = 1 << 26  # tensor elements in one message; the server passes its own configured bound
DEFAULT_MAX_HEADER_BYTES = 1 << 20  # JSON header of a binary message: metadata only, the tensors follow it
DEFAULT_MAX_BYTES_ELEMENTS = 1 << 16  # BYTES elements (ciphertexts) in one message
MAX_JSON_DEPTH = 32  # a V2 body needs about a dozen levels (object, list, entry, data nested up to 8)
MAX_INT_DIGITS = 20  # enough for any UINT64/INT64; longer integers cost quadratic time to convert
MAX_DIMENSIONS = 8
MAX_DIMENSION = 1 << 31

# Every ProtocolError.code decode can give, for servers and clients that branch on the kind of refusal.
ERROR_CODES = frozenset(
    {
        "malformed_request",  # valid JSON that is not a V2 message (missing or mistyped fields)
        "malformed_json",  # not UTF-8, not JSON, or NaN/Infinity
        "json_too_deep",
        "number_out_of_range",  # an integer longer than MAX_INT_DIGITS, or a value the datatype cannot hold
        "header_too_large",
        "bad_binary_framing",  # header length, binary_data_size or BYTES length prefixes disagree with the body
        "bad_datatype",
        "bad_shape",
        "too_many_elements",
        "bad_data",  # JSON data of the wrong kind or count for its datatype and shape
    }
)

_SCAN_CHUNK = 1 << 20
_QUOTE = ord('"')
# Every byte except the ones that decide nesting depth: quotes (strings) and brackets.
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'"[]{}')
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
# Digits to b"1", everything else to b"0": a run of MAX_INT_DIGITS + 1 ones is a number too long to trust.
_DIGIT_MASK = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_DIGIT_RUN = b"1" * (MAX_INT_DIGITS + 1)


class ProtocolError(ValueError):
    """A body that does not follow the Open Inference Protocol.

    `code` is a machine-readable kind (e.g. "bad_shape") that the server returns next to the message.
    """

    def __init__(self, message: str, code: str = "malformed_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Tensor:
    """One named tensor: numeric data as a numpy array, BYTES data as a list of bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: Any
    parameters: dict = field(default_factory=dict)

    def element_count(self) -> int:
        # Python ints: numpy's int64 product silently wraps for shapes like [2**32, 2**32].
        return math.prod(self.shape)


@dataclass
class Message:
    """A V2 inference request or response."""

    tensors: list[Tensor]
    parameters: dict = field(default_factory=dict)
    id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    outputs_requested: list[dict] | None = None


def _json_nests_deeper_than(text: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit`; linear time, no recursion.

    json's scanner recurses once per level, so depth must be known before parsing. The scan is
    vectorised over chunks because a Python loop over a 100 MB body would take tens of seconds.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return False  # too few brackets to nest that deep anywhere: the common case, no scan
    if b"\\" in text:
        # Backslashes are only legal inside strings. Dropping escaped backslashes first, then escaped
        # quotes, leaves only the quotes that open and close strings (exact for valid JSON; invalid
        # JSON is refused by the parser at the first wrong byte, before it can recurse past it).
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = np.frombuffer(text.translate(None, _NOT_STRUCTURAL), dtype=np.uint8)
    inside_string = False
    level = 0
    for start in range(0, len(marks), _SCAN_CHUNK):
        chunk = marks[start : start + _SCAN_CHUNK]
        # An odd number of quotes so far means inside a string; the uint8 sum wraps but keeps parity.
        in_string = (np.cumsum(chunk == _QUOTE, dtype=np.uint8) & 1).view(np.bool_)
        if inside_string:
            in_string = ~in_string
        steps = _DEPTH_STEP[chunk]
        steps[in_string] = 0
        levels = np.cumsum(steps, dtype=np.int64)
        levels += level
        if int(levels.max()) > limit:
            return True
        level, inside_string = int(levels[-1]), bool(in_string[-1])
    return False


def _parse_bounded_int(digits: str) -> int:
    # Refused before int() converts it: conversion is quadratic in length, and past 4300 digits
    # Python raises a ValueError of its own.
    if len(digits) - digits.startswith("-") > MAX_INT_DIGITS:
        raise ProtocolError(f"an integer of {len(digits)} characters is out of range", "number_out_of_range")
    return int(digits)


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not a JSON number", "malformed_json")


def _load_json(text: bytes) -> Any:
    try:
        decoded = str(text, "utf-8-sig")  # json.loads(bytes) used to accept a leading BOM too
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"the JSON header is not UTF-8: {exc.reason} at byte {exc.start}", "malformed_json"
        ) from None
    if _json_nests_deeper_than(text, MAX_JSON_DEPTH):
        raise ProtocolError(f"the JSON header nests deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
    # The per-integer hook makes integer-heavy bodies ~3x slower to parse, so it is only installed
    # when some digit run (in a number or a string) is long enough to need it.
    long_digits = _LONG_DIGIT_RUN in text.translate(_DIGIT_MASK)
    try:
        return json.loads(
            decoded, parse_int=_parse_bounded_int if long_digits else None, parse_constant=_refuse_constant
        )
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"the JSON header is malformed: {exc}", "malformed_json") from None
    except RecursionError:
        # Not reached after the depth scan; kept so a parser change can never turn into a 500.
        raise ProtocolError("the JSON header nests too deeply", "json_too_deep") from None
    except ValueError as exc:  # Python's int-string conversion limit, should the hook ever be bypassed
        raise ProtocolError(f"a number in the JSON header is out of range: {exc}", "number_out_of_range") from None


def _check_shape(shape: object, where: str) -> tuple[list[int], int]:
    """The shape and its element count, computed with Python ints (numpy's int64 product wraps)."""
    if not isinstance(shape, list):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers", "bad_shape")
    if len(shape) > MAX_DIMENSIONS:
        raise ProtocolError(f"{where}: at most {MAX_DIMENSIONS} dimensions are supported", "bad_shape")
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= MAX_DIMENSION:
            raise ProtocolError(f"{where}: shape must be a list of integers between 0 and {MAX_DIMENSION}", "bad_shape")
    return shape, math.prod(shape)


def _pack_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in elements)


def _unpack_bytes_elements(raw: memoryview, count: int, where: str) -> list[memoryview]:
    """Views into the body, not copies: a batch request can carry hundreds of MB of ciphertexts."""
    if count > len(raw) // 4:
        # Each element takes at least its 4-byte length prefix: refused before the loop allocates anything.
        raise ProtocolError(f"{where}: {len(raw)} bytes cannot hold {count} BYTES elements", "bad_binary_framing")
    elements = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: BYTES element {index} has a truncated length prefix", "bad_binary_framing")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"{where}: BYTES element {index} is truncated", "bad_binary_framing")
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise ProtocolError(
            f"{where}: {len(raw) - offset} bytes left over after {count} elements", "bad_binary_framing"
        )
    return elements


def _flatten(data: object, where: str) -> list:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a list", "bad_data")
    # Level by level in C (map, set, chain): a per-item Python loop costs seconds on a 100 MB body.
    level = data
    for _ in range(MAX_DIMENSIONS):
        kinds = set(map(type, level))
        if list not in kinds:
            return level
        if len(kinds) > 1:
            return _flatten_ragged(data, where)  # lists and scalars side by side
        level = list(chain.from_iterable(level))
    if list in set(map(type, level)):
        raise ProtocolError(f"{where}: data nested too deeply", "bad_data")
    return level


def _flatten_ragged(data: list, where: str) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_DIMENSIONS:
                    raise ProtocolError(f"{where}: data nested too deeply", "bad_data")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _tensor_from_json_data(datatype: str, shape: list[int], count: int, data: object, where: str) -> Any:
    flat = _flatten(data, where)
    if len(flat) != count:
        raise ProtocolError(f"{where}: {len(flat)} elements given for shape {shape}", "bad_data")
    if datatype == "BYTES":
        if not set(map(type, flat)) <= {str}:
            raise ProtocolError(f"{where}: BYTES data in JSON must be strings", "bad_data")
        try:
            return [e.encode("utf-8") for e in flat]
        except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
            raise ProtocolError(f"{where}: BYTES data holds a string that is not valid Unicode", "bad_data") from None
    # Exact types (json.loads makes no subclasses); true and false are values of BOOL only.
    allowed = {int, float, bool} if datatype == "BOOL" else {int, float}
    if not set(map(type, flat)) <= allowed:
        raise ProtocolError(f"{where}: {datatype} data must be numbers", "bad_data")
    dtype = np.dtype(NUMERIC_DTYPES[datatype])
    if dtype.kind in "iu" and flat:
        # Checked on the Python values: numpy would wrap or raise depending on its version.
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise ProtocolError(f"{where}: data does not fit {datatype}", "number_out_of_range")
    try:
        with np.errstate(all="ignore"):  # overflow to inf is detected below rather than warned about
            array = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise ProtocolError(f"{where}: data does not fit {datatype}: {exc}", "number_out_of_range") from None
    # JSON numbers are finite; inf here is a literal too large for the datatype (or for any float).
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(f"{where}: data does not fit {datatype}", "number_out_of_range")
    return array.reshape(shape)


def decode(
    body: bytes,
    header_length: int | None,
    tensor_key: str,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_bytes_elements: int = DEFAULT_MAX_BYTES_ELEMENTS,
) -> Message:
    """Parse a request (`tensor_key="inputs"`) or response (`"outputs"`) body.

    `header_length` is the value of Inference-Header-Content-Length, or None for pure JSON.
    `max_elements` bounds the elements of all tensors together, checked from the shapes before
    anything is allocated, and `max_bytes_elements` the BYTES elements among them (each becomes a
    Python object of ~200 bytes for as little as 4 bytes of body); `max_header_bytes` bounds the
    JSON header of a binary body (a pure JSON body is bounded by the caller's body size limit
    only). Every refusal is a ProtocolError.
    """
    if header_length is None:
        header_bytes, rest = bytes(body), memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes", "bad_binary_framing"
            )
        if header_length > max_header_bytes:
            raise ProtocolError(
                f"the JSON header takes {header_length} bytes; at most {max_header_bytes} are accepted",
                "header_too_large",
            )
        view = memoryview(body)
        header_bytes, rest = bytes(view[:header_length]), view[header_length:]
    header = _load_json(header_bytes)
    if not isinstance(header, dict):
        raise ProtocolError("the JSON header must be an object")
    entries = header.get(tensor_key)
    if not isinstance(entries, list) or not entries:
        raise ProtocolError(f"'{tensor_key}' must be a non-empty list")
    parameters = header.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    tensors = []
    offset = 0
    total = byte_elements = 0
    for index, entry in enumerate(entries):
        where = f"{tensor_key}[{index}]"
        if not isinstance(entry, dict):
            raise ProtocolError(f"{where} must be an object")
        name, datatype = entry.get("name"), entry.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMERIC_DTYPES):
            raise ProtocolError(f"{where}: unknown datatype {datatype!r:.40}", "bad_datatype")
        shape, count = _check_shape(entry.get("shape"), where)
        total += count
        if datatype == "BYTES":
            byte_elements += count
            if byte_elements > max_bytes_elements:
                raise ProtocolError(
                    f"{where}: shape {shape} brings the message to {byte_elements} BYTES elements; "
                    f"at most {max_bytes_elements} are accepted",
                    "too_many_elements",
                )
        if total > max_elements:
            raise ProtocolError(
                f"{where}: shape {shape} brings the message to {total} elements; at most {max_elements} are accepted",
                "too_many_elements",
            )
        tensor_params = entry.get("parameters", {})
        if not isinstance(tensor_params, dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        size = tensor_params.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise ProtocolError(f"{where}: binary_data_size given without {HEADER_LENGTH}", "bad_binary_framing")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer", "bad_binary_framing")
            if offset + size > len(rest):
                raise ProtocolError(f"{where}: binary data is truncated", "bad_binary_framing")
            raw = rest[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                data: Any = _unpack_bytes_elements(raw, count, where)
            else:
                dtype = np.dtype(NUMERIC_DTYPES[datatype]).newbyteorder("<")
                if size != count * dtype.itemsize:
                    raise ProtocolError(
                        f"{where}: {size} bytes do not hold {count} {datatype} values", "bad_binary_framing"
                    )
                data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
                data = data.reshape(shape)
        else:
            if "data" not in entry:
                raise ProtocolError(f"{where}: neither 'data' nor binary_data_size given")
            data = _tensor_from_json_data(datatype, shape, count, entry["data"], where)
        tensors.append(Tensor(name, datatype, shape, data, tensor_params))
    if offset != len(rest):
        raise ProtocolError(
            f"{len(rest) - offset} bytes of binary data follow the declared tensors", "bad_binary_framing"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    outputs_requested = _requested_outputs(header.get("outputs")) if tensor_key == "inputs" else None
    return Message(
        tensors=tensors,
        parameters=parameters,
        id=request_id,
        model_name=header.get("model_name") if isinstance(header.get("model_name"), str) else None,
        model_version=header.get("model_version") if isinstance(header.get("model_version"), str) else None,
        outputs_requested=outputs_requested,
    )


def _requested_outputs(entries: object) -> list[dict] | None:
    """A request's `outputs`: a list of {"name", "parameters"?} objects, each name once."""
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ProtocolError("'outputs' must be a list of objects")
    seen = set()
    for index, entry in enumerate(entries):
        where = f"outputs[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ProtocolError(f"{where} must be an object with a non-empty 'name'")
        if entry["name"] in seen:
            raise ProtocolError(f"{where}: output {entry['name']!r:.60} is requested twice")
        seen.add(entry["name"])
        params = entry.get("parameters", {})
        if not isinstance(params, dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        if "binary_data" in params and not isinstance(params["binary_data"], bool):
            raise ProtocolError(f"{where}: parameters.binary_data must be true or false")
    return entries


def binary_outputs(request: Message, names: list[str]) -> set[str]:
    """Which of the response's outputs go in binary, as the binary tensor extension has it: an output's
    own `binary_data` if the request names it with one, else the request's `binary_data_output`
    (default false: JSON)."""
    default = request.parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise ProtocolError("parameter 'binary_data_output' must be true or false")
    chosen = {e["name"]: e.get("parameters", {}).get("binary_data") for e in request.outputs_requested or []}
    return {name for name in names if (default if chosen.get(name) is None else chosen[name])}


def encode(message: Message, tensor_key: str, binary: bool | set[str]) -> tuple[bytes, int | None]:
    """Serialize a message; returns (body, header_length or None for pure JSON).

    `binary`: every tensor in binary (True), none (False), or the tensors of these names."""
    binary_names = {t.name for t in message.tensors} if binary is True else (binary or set())
    header: dict[str, Any] = {}
    if message.id is not None:
        header["id"] = message.id
    if message.model_name is not None:
        header["model_name"] = message.model_name
    if message.model_version is not None:
        header["model_version"] = message.model_version
    if message.parameters:
        header["parameters"] = message.parameters
    entries = []
    blobs = []
    for tensor in message.tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = dict(tensor.parameters)
        if tensor.name in binary_names:
            if tensor.datatype == "BYTES":
                blob = _pack_bytes_elements(list(tensor.data))
            else:
                dtype = np.dtype(NUMERIC_DTYPES[tensor.datatype]).newbyteorder("<")
                blob = np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()
            params["binary_data_size"] = len(blob)
            blobs.append(blob)
        elif tensor.datatype == "BYTES":
            entry["data"] = [e.decode("utf-8") for e in tensor.data]
        else:
            entry["data"] = np.asarray(tensor.data).reshape(-1).tolist()
        if params:
            entry["parameters"] = params
        entries.append(entry)
    header[tensor_key] = entries
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return header_bytes, None
    return header_bytes + b"".join(blobs), len(header_bytes)
