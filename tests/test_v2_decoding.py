"""Hostile bodies for the V2 decoder: every refusal is a ProtocolError with a code, never another exception.

Each attack that once answered 500 (deep nesting, huge integers, shapes whose int64 product wraps)
is covered in JSON and in binary bodies, next to its neighbours just inside the bounds.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heserve.protocol import v2


def entry(datatype: str = "FP32", shape: Any = (2,), data: Any = (1.0, 2.0), **fields: Any) -> dict:
    out = {"name": "x", "datatype": datatype, "shape": list(shape) if isinstance(shape, tuple) else shape}
    if data is not None:
        out["data"] = list(data) if isinstance(data, tuple) else data
    out.update(fields)
    return out


def json_body(*entries: dict, **header: Any) -> bytes:
    return json.dumps({"inputs": list(entries) or [entry()], **header}).encode()


def binary_body(blob: bytes, *entries: dict) -> tuple[bytes, int]:
    header = json.dumps({"inputs": list(entries)}).encode()
    return header + blob, len(header)


def binary_entry(datatype: str, shape: Any, size: int) -> dict:
    return entry(datatype, shape, None, parameters={"binary_data_size": size})


def refused(body: bytes, header_length: int | None, code: str, **limits: Any) -> v2.ProtocolError:
    with pytest.raises(v2.ProtocolError) as info:
        v2.decode(body, header_length, "inputs", **limits)
    assert info.value.code == code, str(info.value)
    assert code in v2.ERROR_CODES
    return info.value


def test_protocol_error_code_defaults_and_one_argument_use():
    assert v2.ProtocolError("plain").code == "malformed_request"
    assert str(v2.ProtocolError("plain")) == "plain"
    assert v2.ProtocolError("shaped", "bad_shape").code == "bad_shape"
    assert isinstance(v2.ProtocolError("x"), ValueError)  # callers catching ValueError keep working
    refused(b"[1]", None, "malformed_request")
    refused(b'{"inputs": []}', None, "malformed_request")


# Nesting depth


DEEP = 100_000


@pytest.mark.parametrize(
    "deep",
    [
        b"[" * DEEP,
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        json_body()[:-1] + b',"parameters":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
        json_body(entry(data=None))[:-3] + b',"data":' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}]}",
    ],
    ids=["open", "balanced", "objects", "parameters", "data"],
)
def test_deep_json_is_refused_quickly(deep):
    start = time.perf_counter()
    refused(deep, None, "json_too_deep")
    body, header_length = deep + b"\x00\x00\x00\x00", len(deep)
    refused(body, header_length, "json_too_deep")
    assert time.perf_counter() - start < 1.0


def nested_parameters(levels: int) -> bytes:
    # The body itself is an object holding "parameters": two levels besides the nested ones.
    return json_body()[:-1] + b',"parameters":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}"


def test_depth_bound_is_exact():
    allowed = v2.MAX_JSON_DEPTH - 1
    assert v2.decode(nested_parameters(allowed), None, "inputs").parameters
    refused(nested_parameters(allowed + 1), None, "json_too_deep")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1000,
        "]" * 1000 + "[" * 1000,
        '\\"' + "[" * 1000,  # an escaped quote does not end the string
        "\\\\" * 5 + "{" * 1000,
        '"' * 3 + "[" * 1000,
    ],
)
def test_brackets_inside_strings_do_not_count(text):
    message = v2.decode(json_body(entry("BYTES", (1,), (text,))), None, "inputs")
    assert message.tensors[0].data == [text.encode()]


def test_escaped_backslash_ends_the_string_before_deep_brackets():
    # "x\\" closes after the escaped backslash, so the brackets that follow are structure, not text.
    deep = b'{"parameters":{"s":"x\\\\","t":' + b"[" * 40 + b"]" * 40 + b'},"inputs":[]}'
    refused(deep, None, "json_too_deep")


def test_large_bodies_are_scanned_in_linear_time():
    # ~16 MB of brackets and escapes inside strings: the depth scan must stay vectorised.
    text = '[{\\"]}' * 400_000
    body = json_body(entry("BYTES", (6,), (text,) * 6))
    start = time.perf_counter()
    assert len(v2.decode(body, None, "inputs").tensors[0].data) == 6
    assert time.perf_counter() - start < 3.0


# Numbers


SENTINEL = 271828


def with_literal(body: bytes, literal: str) -> bytes:
    """The body with the number SENTINEL spelled as `literal`, which json.dumps could not write."""
    assert body.count(str(SENTINEL).encode()) == 1
    return body.replace(str(SENTINEL).encode(), literal.encode())


def test_huge_integers_are_refused_before_conversion():
    huge = "9" * 5000  # past Python's int-string conversion limit, which raises a bare ValueError
    for body in (
        json_body(entry("INT64", (1,), (SENTINEL,))),
        json_body(entry("FP32", (SENTINEL,), (1.0,))),
        json_body(parameters={"n": SENTINEL}),
        json_body(binary_entry("FP32", [0], SENTINEL)),
    ):
        refused(with_literal(body, huge), None, "number_out_of_range")
        refused(with_literal(body, "-" + huge), None, "number_out_of_range")
        header = with_literal(body, huge)
        refused(header + b"\x00" * 4, len(header), "number_out_of_range")
        refused(with_literal(body, "1" * 21), None, "number_out_of_range")
    refused(json_body(entry("INT64", (1,), (10**20,))), None, "number_out_of_range")  # 21 digits
    refused(json_body(entry("INT64", (1,), (-(10**20),))), None, "number_out_of_range")


def test_parameters_with_long_digits_in_strings_still_parse():
    message = v2.decode(json_body(parameters={"key_id": "1" * 64, "n": 12345}), None, "inputs")
    assert message.parameters == {"key_id": "1" * 64, "n": 12345}


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("UINT64", 2**64 - 1), ("INT64", -(2**63)), ("INT64", 2**63 - 1), ("UINT8", 255), ("INT8", -128)],
)
def test_integers_at_the_datatype_bounds_are_kept(datatype, value):
    data = v2.decode(json_body(entry(datatype, (1,), (value,))), None, "inputs").tensors[0].data
    assert data.dtype == np.dtype(v2.NUMERIC_DTYPES[datatype]) and int(data[0]) == value


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("UINT64", 2**64), ("INT64", -(2**63) - 1), ("INT64", 2**63), ("UINT8", 256), ("UINT8", -1), ("INT8", -129)],
)
def test_integers_past_the_datatype_bounds_are_refused(datatype, value):
    refused(json_body(entry(datatype, (1,), (value,))), None, "number_out_of_range")
    refused(json_body(entry(datatype, (2,), (0, value))), None, "number_out_of_range")


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    body = json_body(entry("FP32", (1,), (0.0,))).replace(b"[0.0]", b"[" + constant + b"]")
    refused(body, None, "malformed_json")
    refused(json_body(parameters={"x": 0.5}).replace(b"0.5", constant), None, "malformed_json")


@pytest.mark.parametrize(
    ("datatype", "literal"),
    [("FP64", "1e999"), ("FP32", "1e300"), ("FP32", "-3.5e38"), ("FP16", "70000"), ("FP16", "1e5"), ("INT32", "1e999")],
)
def test_numbers_the_datatype_cannot_hold_are_refused(datatype, literal):
    body = json_body(entry(datatype, (2,), (0, 7))).replace(b"7]", literal.encode() + b"]")
    refused(body, None, "number_out_of_range")


@pytest.mark.parametrize(
    ("datatype", "value"), [("FP64", 1e300), ("FP32", 3.4e38), ("FP16", 65504.0), ("FP64", 5e-324), ("FP32", 1e-50)]
)
def test_numbers_the_datatype_can_hold_are_kept(datatype, value):
    data = v2.decode(json_body(entry(datatype, (1,), (value,))), None, "inputs").tensors[0].data
    assert np.isfinite(data).all() and data.dtype == np.dtype(v2.NUMERIC_DTYPES[datatype])


# Shapes and element counts


BAD_SHAPES = [
    [2**32, 2**32],  # int64 product wraps to 0
    [2**62, 4],  # int64 product wraps to 0
    [2**64],  # numpy raises OverflowError
    [2**31 + 1],
    [-1],
    [True],
    [1.0],
    "3",
    None,
    {"0": 1},
    [1] * 9,
]


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=[str(i) for i in range(len(BAD_SHAPES))])
def test_bad_shapes_are_refused_in_json_and_binary(shape):
    refused(json_body(entry("FP32", shape, ())), None, "bad_shape")
    refused(*binary_body(b"", binary_entry("FP32", shape, 0)), "bad_shape")
    refused(*binary_body(b"", binary_entry("BYTES", shape, 0)), "bad_shape")


@pytest.mark.parametrize(
    "shape",
    [[2**31], [2**16, 2**16, 2**16, 2**16], [2**31] * 8, [(1 << 26) + 1], [1 << 13, 1 << 13, 2]],
    ids=["max-dim", "wraps-int64", "eight-max-dims", "one-past", "product-one-past"],
)
def test_shapes_past_max_elements_are_refused_before_allocating(shape):
    refused(json_body(entry("FP32", shape, ())), None, "too_many_elements")
    refused(*binary_body(b"", binary_entry("FP32", shape, 0)), "too_many_elements")
    refused(*binary_body(b"\x00" * 64, binary_entry("BYTES", shape, 64)), "too_many_elements")


def test_max_elements_is_a_keyword_bound_over_the_whole_message():
    six = entry("FP32", (2, 3), (0.0,) * 6)
    assert v2.decode(json_body(six), None, "inputs", max_elements=6).tensors[0].data.shape == (2, 3)
    refused(json_body(six), None, "too_many_elements", max_elements=5)
    refused(json_body(six, six), None, "too_many_elements", max_elements=11)
    assert len(v2.decode(json_body(six, six), None, "inputs", max_elements=12).tensors) == 2


def test_zero_sized_and_scalar_shapes_are_fine():
    for shape in ([0], [2**31, 0], [0] * 8):
        assert v2.decode(json_body(entry("FP32", shape, ())), None, "inputs").tensors[0].data.size == 0
        body, header_length = binary_body(b"", binary_entry("FP32", shape, 0))
        assert v2.decode(body, header_length, "inputs").tensors[0].data.shape == tuple(shape)
    assert v2.decode(json_body(entry("INT32", [], (7,))), None, "inputs").tensors[0].data.shape == ()
    assert v2.Tensor("x", "FP32", [2**32, 2**32], None).element_count() == 2**64


@pytest.mark.parametrize("shape", [[2**31, 0], [3], [1, 1]])
def test_json_data_count_must_match_the_shape(shape):
    refused(json_body(entry("FP32", shape, (1.0, 2.0))), None, "bad_data")
    refused(json_body(entry("BYTES", shape, ("a", "b"))), None, "bad_data")


@pytest.mark.parametrize(
    "data",
    [[1, 2, 3, 4], [[1, 2], [3, 4]], [[1, 2], 3, [4]], [[], [1, 2, 3, 4]], [[[[[[[[[1, 2, 3, 4]]]]]]]]]],
    ids=["flat", "nested", "ragged", "empty-row", "nine-levels"],
)
def test_json_data_may_be_flat_or_nested(data):
    tensor = v2.decode(json_body(entry("INT32", (2, 2), data)), None, "inputs").tensors[0]
    assert tensor.data.tolist() == [[1, 2], [3, 4]]


def test_json_data_of_the_wrong_kind_is_refused():
    refused(json_body(entry("FP32", (1,), ("1",))), None, "bad_data")
    refused(json_body(entry("FP32", (1,), ({"a": 1},))), None, "bad_data")
    refused(json_body(entry("FP32", (1,), 1.0)), None, "bad_data")
    refused(json_body(entry("BYTES", (1,), (1,))), None, "bad_data")
    refused(json_body(entry("FP32", (1,), [[[[[[[[[[1.0]]]]]]]]]])), None, "bad_data")  # ten levels
    refused(json_body(entry("FP32", (2,), [1.0, [[[[[[[[[2.0]]]]]]]]]])), None, "bad_data")
    # "\ud800" is valid JSON but no UTF-8 encoding exists for a lone surrogate.
    refused(json_body(entry("BYTES", (1,), ("\ud800",))), None, "bad_data")


# Binary framing


def test_bytes_element_count_is_bounded_by_the_raw_size_before_looping():
    start = time.perf_counter()
    refused(
        *binary_body(b"\x00" * 8, binary_entry("BYTES", [1 << 26], 8)), "bad_binary_framing", max_bytes_elements=1 << 26
    )
    refused(*binary_body(b"\x00" * 8, binary_entry("BYTES", [1 << 17], 8)), "too_many_elements")
    refused(*binary_body(b"\x00" * 7, binary_entry("BYTES", [2], 7)), "bad_binary_framing")
    assert time.perf_counter() - start < 0.5
    body, header_length = binary_body(b"\x00" * 8, binary_entry("BYTES", [2], 8))
    assert v2.decode(body, header_length, "inputs").tensors[0].data == [b"", b""]


@pytest.mark.parametrize(
    "tail",
    [
        b"\x01",
        b"\x05\x00\x00\x00ab",
        b"\x02\x00\x00\x00abc",
        b"\xff\xff\xff\xff\x00\x00\x00\x00",
        b"\x00\x00\x00\x00\x01\x00",
    ],
)
def test_bytes_elements_must_fill_the_binary_size_exactly(tail):
    refused(*binary_body(tail, binary_entry("BYTES", [2] if len(tail) == 6 else [1], len(tail))), "bad_binary_framing")


@pytest.mark.parametrize(
    ("datatype", "shape", "size"),
    [("FP32", [2, 3], 23), ("FP32", [2, 3], 25), ("FP16", [3], 3), ("UINT64", [1], 4), ("BOOL", [2], 1)],
)
def test_binary_data_size_must_match_datatype_and_shape(datatype, shape, size):
    refused(*binary_body(b"\x00" * size, binary_entry(datatype, shape, size)), "bad_binary_framing")


@pytest.mark.parametrize("size", [-1, 1.5, True, "4", [8], 2**64, 9])
def test_binary_data_size_must_be_a_non_negative_integer_within_the_body(size):
    refused(*binary_body(b"\x00" * 8, binary_entry("FP32", [2], size)), "bad_binary_framing")


def test_binary_framing_errors():
    body, header_length = binary_body(b"\x00" * 8, binary_entry("FP32", [2], 8))
    assert v2.decode(body, header_length, "inputs").tensors[0].data.tolist() == [0.0, 0.0]
    refused(body, -1, "bad_binary_framing")
    refused(body, len(body) + 1, "bad_binary_framing")
    refused(body, 2**70, "bad_binary_framing")
    refused(body + b"\x00", header_length, "bad_binary_framing")  # bytes after the declared tensors
    refused(body, None, "malformed_json")  # raw bytes after the JSON
    refused(json_body(binary_entry("FP32", [2], 8)), None, "bad_binary_framing")  # no header length given


def test_binary_header_is_bounded_but_json_only_bodies_are_not():
    big = {"pad": "p" * (1 << 20)}
    header = json.dumps({"inputs": [binary_entry("FP32", [1], 4)], "parameters": big}).encode()
    refused(header + b"\x00" * 4, len(header), "header_too_large")
    message = v2.decode(header + b"\x00" * 4, len(header), "inputs", max_header_bytes=len(header))
    assert message.parameters == big
    refused(*binary_body(b"\x00" * 4, binary_entry("FP32", [1], 4)), "header_too_large", max_header_bytes=16)
    assert v2.decode(json_body(parameters=big), None, "inputs").parameters == big
    huge_data = entry("FP32", [300_000], (0.5,) * 300_000)  # ~1.5 MB of JSON numbers, no binary part
    assert v2.decode(json_body(huge_data), None, "inputs").tensors[0].data.shape == (300_000,)


@pytest.mark.parametrize("datatype", ["FP128", "bytes", "", None, 3, ["FP32"], {"FP32": 1}])
def test_unknown_datatypes_are_refused(datatype):
    refused(json_body(entry(datatype, (1,), (1,))), None, "bad_datatype")
    refused(*binary_body(b"\x00" * 4, binary_entry(datatype, [1], 4)), "bad_datatype")


def test_text_encoding():
    refused(b"\xff" + json_body(), None, "malformed_json")
    refused(json_body(entry("BYTES", (1,), ("\u00e9",))).replace(b"\\u00e9", b"\xc3"), None, "malformed_json")
    assert v2.decode(b"\xef\xbb\xbf" + json_body(), None, "inputs").tensors[0].data.tolist() == [1.0, 2.0]
    raw_utf8 = json_body(entry("BYTES", (1,), ("\u00e9",))).replace(b"\\u00e9", "\u00e9".encode())
    assert v2.decode(raw_utf8, None, "inputs").tensors[0].data == ["\u00e9".encode()]


# Compatibility: what the client SDK and the server already relied on


@pytest.mark.parametrize("binary", [False, True])
def test_round_trip_of_every_datatype(binary):
    tensors = [
        v2.Tensor(f"t{i}", name, [2], np.array([lo, hi], dtype=dtype))
        for i, (name, dtype) in enumerate(v2.NUMERIC_DTYPES.items())
        for lo, hi in [
            (np.iinfo(dtype).min, np.iinfo(dtype).max)
            if np.dtype(dtype).kind in "iu"
            else (False, True)
            if np.dtype(dtype).kind == "b"
            else (-np.finfo(dtype).max, np.finfo(dtype).max)
        ]
    ]
    tensors.append(v2.Tensor("b", "BYTES", [2, 1], [b"", b"ct"]))
    body, header_length = v2.encode(v2.Message(tensors, {"key_id": "k"}, "r"), "outputs", binary=binary)
    back = v2.decode(body, header_length, "outputs")
    for sent, got in zip(tensors, back.tensors, strict=True):
        assert got.shape == sent.shape and got.datatype == sent.datatype
        if sent.datatype == "BYTES":
            assert [bytes(e) for e in got.data] == sent.data
        else:
            assert np.array_equal(got.data, sent.data) and got.data.dtype == sent.data.dtype


# Fuzzing: whatever arrives, the only exception is a ProtocolError with a known code


def decode_or_refuse(body: bytes, header_length: int | None, tensor_key: str = "inputs") -> None:
    try:
        v2.decode(body, header_length, tensor_key, max_elements=1 << 16, max_header_bytes=1 << 16)
    except v2.ProtocolError as exc:
        assert exc.code in v2.ERROR_CODES, exc.code


SEEDS = [
    binary_body(b"\x00" * 24, binary_entry("FP32", [2, 3], 24)),
    binary_body(b"\x02\x00\x00\x00ab\x00\x00\x00\x00", binary_entry("BYTES", [2], 10)),
    v2.encode(
        v2.Message([v2.Tensor("x", "INT64", [2], np.array([1, -2])), v2.Tensor("y", "BYTES", [1], [b"z"])], {"p": [1]}),
        "inputs",
        binary=False,
    ),
    (json_body(entry("UINT8", [2, 2], ([1, 2], [3, 4])), parameters={"s": 'a\\"[{'}), None),
]
TOKENS = [b"[", b"]", b"{", b"}", b'"', b"\\", b"-", b"9" * 25, b"1e999", b"NaN", b"\xff", b"\x00\x00\x00\x80", b"0"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(
            st.integers(0, 400), st.sampled_from(["replace", "insert", "delete"]), st.sampled_from(TOKENS) | st.binary()
        ),
        max_size=5,
    ),
    header_shift=st.sampled_from([None, 0, 0, 0, -1, 1, -7]),
    tensor_key=st.sampled_from(["inputs", "inputs", "outputs"]),
)
def test_mutated_bodies_raise_only_protocol_errors(seed, edits, header_shift, tensor_key):
    body, header_length = bytearray(seed[0]), seed[1]
    for position, kind, token in edits:
        at = position % (len(body) + 1)
        if kind == "replace":
            body[at : at + len(token)] = token
        elif kind == "insert":
            body[at:at] = token
        else:
            del body[at : at + len(token)]
    if header_shift is not None and header_length is not None:
        header_length += header_shift
    decode_or_refuse(bytes(body), header_length, tensor_key)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
dimensions = st.integers(-2, 4) | st.sampled_from([2**31, 2**31 + 1, 2**32, 2**62, 2**63, 2**64, 10**25])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datatype=st.sampled_from(["BYTES", *v2.NUMERIC_DTYPES]) | json_values,
    shape=st.lists(dimensions, max_size=9) | json_values,
    data=st.lists(st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4), max_size=8)
    | json_values,
    size=st.none() | st.integers(-1, 40) | st.sampled_from([2**64, 10**30]) | json_values,
    blob=st.binary(max_size=40),
    binary=st.booleans(),
    extra=st.dictionaries(st.sampled_from(["id", "parameters", "model_name", "outputs"]), json_values, max_size=2),
)
def test_random_messages_raise_only_protocol_errors(datatype, shape, data, size, blob, binary, extra):
    item: dict = {"name": "x", "datatype": datatype, "shape": shape, "data": data}
    if size is not None:
        item["parameters"] = {"binary_data_size": size}
    header = json.dumps({"inputs": [item], **extra}).encode()
    decode_or_refuse(header + blob if binary else header, len(header) if binary else None)
