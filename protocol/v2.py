"""Open Inference Protocol (V2) request/response bodies, JSON and binary tensor extension.

Binary extension: the JSON header comes first, its length in the
`Inference-Header-Content-Length` HTTP header; raw tensor bytes follow in
declaration order, one tensor per input/output whose `parameters.binary_data_size`
says how many bytes it takes. BYTES tensors are a sequence of elements, each a
4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
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


class ProtocolError(ValueError):
    """A body that does not follow the Open Inference Protocol."""


@dataclass
class Tensor:
    """One named tensor: numeric data as a numpy array, BYTES data as a list of bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: Any
    parameters: dict = field(default_factory=dict)

    def element_count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Message:
    """A V2 inference request or response."""

    tensors: list[Tensor]
    parameters: dict = field(default_factory=dict)
    id: str | None = None
    model_name: str | None = None
    outputs_requested: list[dict] | None = None


def _check_shape(shape: object, where: str) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers")
    if len(shape) > 8:
        raise ProtocolError(f"{where}: at most 8 dimensions are supported")
    return shape


def _pack_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in elements)


def _unpack_bytes_elements(raw: memoryview, count: int, where: str) -> list[memoryview]:
    """Views into the body, not copies: a batch request can carry hundreds of MB of ciphertexts."""
    elements = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: BYTES element {index} has a truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"{where}: BYTES element {index} is truncated")
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise ProtocolError(f"{where}: {len(raw) - offset} bytes left over after {count} elements")
    return elements


def _tensor_from_json_data(name: str, datatype: str, shape: list[int], data: object, where: str) -> Any:
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if datatype == "BYTES":
        flat = _flatten(data, where)
        if len(flat) != count:
            raise ProtocolError(f"{where}: {len(flat)} elements given for shape {shape}")
        if not all(isinstance(e, str) for e in flat):
            raise ProtocolError(f"{where}: BYTES data in JSON must be strings")
        return [e.encode("utf-8") for e in flat]
    flat = _flatten(data, where)
    if len(flat) != count:
        raise ProtocolError(f"{where}: {len(flat)} elements given for shape {shape}")
    if not all(isinstance(v, (int, float)) for v in flat):
        raise ProtocolError(f"{where}: {datatype} data must be numbers")
    try:
        array = np.asarray(flat, dtype=NUMERIC_DTYPES[datatype])
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"{where}: data does not fit {datatype}: {exc}") from None
    return array.reshape(shape)


def _flatten(data: object, where: str) -> list:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a list")
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise ProtocolError(f"{where}: data nested too deeply")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def decode(body: bytes, header_length: int | None, tensor_key: str) -> Message:
    """Parse a request (`tensor_key="inputs"`) or response (`"outputs"`) body.

    `header_length` is the value of Inference-Header-Content-Length, or None for pure JSON.
    """
    if header_length is None:
        header_bytes, rest = body, memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} bytes")
        view = memoryview(body)
        header_bytes, rest = bytes(view[:header_length]), view[header_length:]
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the JSON header is malformed: {exc}") from None
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
    for index, entry in enumerate(entries):
        where = f"{tensor_key}[{index}]"
        if not isinstance(entry, dict):
            raise ProtocolError(f"{where} must be an object")
        name, datatype = entry.get("name"), entry.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}: 'name' must be a non-empty string")
        if datatype != "BYTES" and datatype not in NUMERIC_DTYPES:
            raise ProtocolError(f"{where}: unknown datatype {datatype!r}")
        shape = _check_shape(entry.get("shape"), where)
        tensor_params = entry.get("parameters", {})
        if not isinstance(tensor_params, dict):
            raise ProtocolError(f"{where}: 'parameters' must be an object")
        size = tensor_params.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise ProtocolError(f"{where}: binary_data_size given without {HEADER_LENGTH}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(rest):
                raise ProtocolError(f"{where}: binary data is truncated")
            raw = rest[offset : offset + size]
            offset += size
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if datatype == "BYTES":
                data: Any = _unpack_bytes_elements(raw, count, where)
            else:
                dtype = np.dtype(NUMERIC_DTYPES[datatype]).newbyteorder("<")
                if size != count * dtype.itemsize:
                    raise ProtocolError(f"{where}: {size} bytes do not hold {count} {datatype} values")
                data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
                data = data.reshape(shape)
        else:
            if "data" not in entry:
                raise ProtocolError(f"{where}: neither 'data' nor binary_data_size given")
            data = _tensor_from_json_data(name, datatype, shape, entry["data"], where)
        tensors.append(Tensor(name, datatype, shape, data, tensor_params))
    if offset != len(rest):
        raise ProtocolError(f"{len(rest) - offset} bytes of binary data follow the declared tensors")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    outputs_requested = header.get("outputs") if tensor_key == "inputs" else None
    return Message(
        tensors=tensors,
        parameters=parameters,
        id=request_id,
        model_name=header.get("model_name") if isinstance(header.get("model_name"), str) else None,
        outputs_requested=outputs_requested if isinstance(outputs_requested, list) else None,
    )


def encode(message: Message, tensor_key: str, binary: bool) -> tuple[bytes, int | None]:
    """Serialize a message; returns (body, header_length or None for pure JSON)."""
    header: dict[str, Any] = {}
    if message.id is not None:
        header["id"] = message.id
    if message.model_name is not None:
        header["model_name"] = message.model_name
    if message.parameters:
        header["parameters"] = message.parameters
    entries = []
    blobs = []
    for tensor in message.tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = dict(tensor.parameters)
        if binary:
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
    if not binary:
        return header_bytes, None
    return header_bytes + b"".join(blobs), len(header_bytes)
