"""API keys and tenant isolation through a real gunicorn server."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import requests

from heserve.client import AuthenticationError, Client, NotFoundError
from heserve.models.recipes import diabetes_split
from heserve.server.service.auth import APIKeys, Unauthorized

from .helpers import infer_with_key
from .serverproc import start_server

ALICE, BOB = "alice-secret-token", "bob-secret-token"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    keys = tmp / "api-keys"
    keys.write_text(f"# tenants\nalice {ALICE}\nbob sha256:{hashlib.sha256(BOB.encode()).hexdigest()}\n")
    proc = start_server(tmp, workers=2, api_keys_file=str(keys))
    yield proc
    proc.stop()


def test_requests_without_a_valid_key_get_401(secured):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ALICE}):
        response = requests.get(f"{secured.url}/v2/models", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "API key" in response.json()["error"]
    assert requests.get(f"{secured.url}/v2/health/ready", timeout=10).status_code == 200
    assert (
        requests.get(f"{secured.url}/v2/models", headers={"Authorization": f"Bearer {ALICE}"}, timeout=10).status_code
        == 200
    )
    with Client(secured.url, api_key="nope") as client, pytest.raises(AuthenticationError):
        client.models()


def test_a_tenant_cannot_use_read_or_erase_another_tenants_key(secured):
    _, x_test, _, _ = diabetes_split()
    with Client(secured.url, api_key=ALICE) as alice, Client(secured.url, api_key=BOB) as bob:
        model = alice.model("diabetes-linreg")
        expected = model.predict(x_test[:2])
        key_id = model.key_id
        with pytest.raises(NotFoundError):
            bob.key_status(key_id)
        with pytest.raises(NotFoundError):
            bob.delete_key(key_id)
        intruder = bob.model("diabetes-linreg", secret_context=model.secret_context)
        with pytest.raises(NotFoundError, match="unknown, expired or erased"):
            infer_with_key(intruder, key_id, x_test[:2])
        # Alice's key is untouched by all of that.
        assert alice.key_status(key_id)["status"] == "active"
        assert np.allclose(model.predict(x_test[:2]), expected, atol=1e-3)


def test_api_key_parsing_and_constant_time_lookup(tmp_path):
    keys = APIKeys.load(None, f"a:{ALICE},b:sha256:{hashlib.sha256(BOB.encode()).hexdigest()}")
    assert keys.tenant(f"Bearer {ALICE}") == "a"
    assert keys.tenant(f"Bearer {BOB}") == "b"
    with pytest.raises(Unauthorized):
        keys.tenant(f"Bearer {ALICE}x")
    assert APIKeys.load(None, "").tenant(None) == ""  # no keys configured: open, one tenant
    bad = tmp_path / "bad"
    bad.write_text("only-one-field\n")
    with pytest.raises(ValueError, match="expected 'tenant key"):
        APIKeys.load(bad)


def test_api_key_roles(tmp_path):
    """`operator` is the one role; a key without one is an ordinary tenant; a key may hold colons."""
    keys = APIKeys.load(None, f"a:{ALICE},ops:s3:cr3t:operator")
    assert keys.identify(f"Bearer {ALICE}") == ("a", "tenant")
    assert keys.identify("Bearer s3:cr3t") == ("ops", "operator")
    listed = tmp_path / "keys"
    listed.write_text(f"a {ALICE}\nops sha256:{hashlib.sha256(BOB.encode()).hexdigest()} operator\n")
    keys = APIKeys.load(listed)
    assert keys.identify(f"Bearer {BOB}") == ("ops", "operator")
    assert keys.describe() == {"mode": "api_keys", "tenants": 2, "keys": 2, "operator_keys": 1}
    listed.write_text(f"a {ALICE} admin\n")
    with pytest.raises(ValueError, match="role must be one of"):
        APIKeys.load(listed)


def test_metrics_need_an_api_key_unless_exempted(secured, tmp_path):
    assert requests.get(f"{secured.url}/metrics", timeout=10).status_code == 401
    from heserve.server.service.config import ServerConfig
    from heserve.server.web.app import create_app

    app = create_app(ServerConfig(keys_dir=tmp_path, api_keys=f"alice:{ALICE}", auth_exempt_metrics=True))
    with app.test_client() as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/v2/models").status_code == 401
