"""The SDK against the server's Flask app in this process (WSGITransport): no socket, no gunicorn.

What an application sees of the service, for every shipped model and layout, in seconds; the
same code paths over real HTTP are in test_end_to_end.py, test_sdk.py and test_networks.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from heserve.client import Client, HEClientError, InputError, NotFoundError
from heserve.client.transport import WSGITransport
from heserve.models.nets import digits_split, mnist_size_split
from heserve.server.service.config import SHIPPED_MODELS_DIR, ServerConfig
from heserve.server.web.app import create_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    config = ServerConfig.from_env(models_dir=SHIPPED_MODELS_DIR, keys_dir=tmp_path_factory.mktemp("keys"))
    return create_app(config)


@pytest.fixture(scope="module")
def client(app):
    with Client("http://in-process", transport=WSGITransport(app)) as client:
        yield client


def rows_for(app, name: str, count: int) -> np.ndarray:
    if name in ("digits-mlp", "digits-cnn"):
        return digits_split()[1][:count]
    if name == "mnist-size-mlp":
        return mnist_size_split()[1][:count]
    from heserve.benchmarks.linear import SPLITS

    return SPLITS[name]()[1][:count]


SHIPPED = ["breast-cancer-logreg", "diabetes-linreg", "linnerud-linreg", "digits-mlp", "digits-cnn", "mnist-size-mlp"]


@pytest.mark.parametrize("layout", ["single", "batch"])
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_agrees_with_plaintext(app, client, name, layout):
    model = client.model(name)
    rows = rows_for(app, name, 2 if layout == "single" else 5)
    expected = app.extensions["heserve"].registry.get(name).plaintext_predict(rows)
    got = model.raw_scores(rows, layout=layout)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 2e-3
    model.delete_key()


def test_errors_are_the_sdks_own(client):
    with pytest.raises(NotFoundError) as info:
        client.model("no-such-model")
    assert info.value.status == 404
    model = client.model("diabetes-linreg")
    with pytest.raises(InputError, match="10"):
        model.predict(np.zeros((1, 3)))
    with pytest.raises(InputError):
        model.predict([["a"] * 10])
    assert isinstance(info.value, HEClientError)


def test_erased_keys_are_registered_again(client):
    model = client.model("diabetes-linreg")
    first = model.predict(np.zeros((1, 10)))
    key_id = model.key_id
    client.delete_key(key_id)  # erased behind the model's back: the next call registers afresh
    assert np.allclose(model.predict(np.zeros((1, 10))), first, atol=1e-4)
    assert model.key_id not in (None, key_id)


def test_linear_registrations_carry_a_public_key_and_no_galois_keys(client):
    model = client.model("breast-cancer-logreg")
    model.predict(np.zeros((1, 30)))
    status = client.key_status(model.key_id)
    assert status["galois_elements"] == [] and not status["relin_keys"]
    assert 60_000 < status["size_bytes"] < 200_000  # the public key alone


class Corrupting(WSGITransport):
    """The real app, with the answers to inference requests replaced by `corrupt(response)`."""

    def __init__(self, app, corrupt):
        super().__init__(app)
        self.corrupt = corrupt

    def request(self, method, url, body, headers, timeout):
        response = super().request(method, url, body, headers, timeout)
        return self.corrupt(response) if url.endswith("/infer") else response


def _replace(response, content: bytes, headers: dict | None = None):
    from heserve.client.transport import Response

    return Response(200, headers if headers is not None else response.headers, content)


def _fewer_results(response):
    from heserve.protocol import v2

    length = int(next(v for k, v in response.headers.items() if k.lower() == v2.HEADER_LENGTH.lower()))
    message = v2.decode(response.content, length, "outputs")
    tensor = message.tensors[0]
    tensor.data, tensor.shape = tensor.data[:1], [1]
    body, header = v2.encode(message, "outputs", binary=True)
    return _replace(response, body, {v2.HEADER_LENGTH: str(header), "Content-Type": v2.BINARY_CONTENT_TYPE})


def _garbage_ciphertexts(response):
    from heserve.protocol import v2

    length = int(next(v for k, v in response.headers.items() if k.lower() == v2.HEADER_LENGTH.lower()))
    message = v2.decode(response.content, length, "outputs")
    message.tensors[0].data = [b"\x00" * 64 for _ in message.tensors[0].data]
    body, header = v2.encode(message, "outputs", binary=True)
    return _replace(response, body, {v2.HEADER_LENGTH: str(header), "Content-Type": v2.BINARY_CONTENT_TYPE})


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda r: _replace(r, b"not json at all", {}),
        lambda r: _replace(r, r.content[:-100]),
        lambda r: _replace(r, b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}', {}),
        _fewer_results,
        _garbage_ciphertexts,
    ],
    ids=["not-json", "truncated", "plaintext-tensor", "fewer-results", "garbage-ciphertexts"],
)
@pytest.mark.parametrize("name", ["diabetes-linreg", "digits-mlp"])
def test_a_broken_answer_raises_the_sdks_own_error(app, name, corrupt):
    """Whatever comes back, the SDK raises an HEClientError, never a ValueError, KeyError or SEAL's."""
    with Client("http://in-process", transport=Corrupting(app, corrupt)) as client:
        model = client.model(name)
        rows = np.zeros((2, model.n_features_in_))
        with pytest.raises(HEClientError):
            model.raw_scores(rows, layout="single")
