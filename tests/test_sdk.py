"""The client SDK: estimator surface, typed errors, key files, and its small dependency set."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from heserve.client import (
    BadRequestError,
    Client,
    ConnectionFailedError,
    ConnectionTimeoutError,
    HEClientError,
    InputError,
    KeyFileError,
    NotFoundError,
    SecretContext,
)
from heserve.engine.params import CKKSParams
from heserve.models.recipes import breast_cancer_split

from .serverproc import ROOT, free_port


def test_wrong_inputs_raise_input_error_before_any_request(client):
    model = client.model("breast-cancer-logreg")
    with pytest.raises(InputError, match=r"29 features.*expects 30"):
        model.predict(np.zeros((2, 29)))
    with pytest.raises(InputError, match="3-D"):
        model.predict(np.zeros((2, 30, 1)))
    with pytest.raises(InputError, match="NaN"):
        model.predict(np.full((1, 30), np.nan))
    with pytest.raises(InputError, match="no rows"):
        model.predict(np.zeros((0, 30)))
    with pytest.raises(InputError, match="numeric"):
        model.predict([["a"] * 30])
    with pytest.raises(InputError, match="layouts"):
        model.predict(np.zeros((1, 30)), layout="diagonal")
    assert model.key_id is None  # nothing was registered for bad input
    regression = client.model("diabetes-linreg")
    with pytest.raises(InputError, match="regression"):
        regression.predict_proba(np.zeros((1, 10)))


def test_server_errors_are_typed_and_carry_the_message(client):
    with pytest.raises(NotFoundError, match="not served") as info:
        client.model("no-such-model")
    assert info.value.status == 404 and "no-such-model" in info.value.message
    with pytest.raises(NotFoundError):
        client.key_status("0" * 32)
    assert issubclass(BadRequestError, HEClientError)


def test_unreachable_server_raises_connection_error():
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client,
        pytest.raises(ConnectionFailedError, match="cannot reach") as failure,
    ):
        client.models()
    assert not isinstance(failure.value, ConnectionTimeoutError)


def test_a_server_that_never_answers_raises_a_timeout_error():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(url, timeout=0.5) as client, pytest.raises(ConnectionTimeoutError, match="no answer within"):
            client.models()


def test_key_file_round_trip_and_reuse(client, tmp_path):
    _, x_test, _, _ = breast_cancer_split()
    path = tmp_path / "bc.key"
    first = client.model("breast-cancer-logreg", key_file=path)
    scores = first.decision_function(x_test[:3])
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    again = client.model("breast-cancer-logreg", key_file=path)
    assert np.allclose(again.decision_function(x_test[:3]), scores, atol=1e-4)
    # The reloaded key decrypts what the first one encrypted.
    request = first.encrypt(x_test[:1], "single")[0]
    assert np.allclose(again.decrypt(request, first.send(request)), scores[:1, None], atol=1e-4)


def test_bad_key_files(client, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not a key file"):
        client.model("breast-cancer-logreg", key_file=bad).predict(np.zeros((1, 30)))
    with pytest.raises(KeyFileError, match="cannot read"):
        SecretContext.load(tmp_path / "missing.key")
    other = tmp_path / "other.key"
    SecretContext.generate(CKKSParams(8192, (60, 40, 60))).save(other)
    with pytest.raises(KeyFileError, match="needs"):
        client.model("breast-cancer-logreg", key_file=other).predict(np.zeros((1, 30)))


def test_delete_key_erases_on_server(client):
    model = client.model("diabetes-linreg")
    model.predict(np.zeros((1, 10)))
    key_id = model.key_id
    model.delete_key()
    with pytest.raises(NotFoundError):
        client.key_status(key_id)
    model.predict(np.zeros((1, 10)))  # registers afresh
    assert model.key_id not in (None, key_id)


def test_client_imports_without_server_side_packages(server):
    """The SDK works with numpy, tenseal and requests: flask, gunicorn, sklearn, torch are blocked."""
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in ("flask", "werkzeug", "gunicorn", "sklearn", "torch") or name.startswith(
                    ("heserve.server", "heserve.models")
                ):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from heserve.client import Client
        with Client("{server.url}") as c:
            print(c.model("diabetes-linreg").predict(np.zeros((2, 10))).shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2,)"
