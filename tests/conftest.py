from __future__ import annotations

import pytest

from heserve.client import Client

from .serverproc import ServerProcess, start_server

# Tests that start processes (gunicorn, redis-server, nginx, a notebook kernel, pip and a fresh
# virtual environment, load generators) carry the `slow` marker: `pytest -m "not slow"` (make
# test-fast) runs everything else, in process, in under a minute; `make test` runs all.
SLOW_MODULES = {
    "test_adversarial", "test_bad_input", "test_benchmarks", "test_cli", "test_cluster", "test_end_to_end",
    "test_fuzz", "test_load", "test_metrics", "test_notebooks", "test_packaging", "test_privacy",
    "test_redis_keystore", "test_sdk", "test_tenants",
}  # fmt: skip
PROCESS_FIXTURES = {"server", "client", "redis_server"}
# Tests of mixed modules that start a redis-server themselves.
SLOW_TESTS = {
    "test_a_shared_client_and_scripts_reloaded_after_a_restart",
    "test_redis_down_is_unavailable_quickly_and_recovers",
    # Real SEAL at N=8192-16384, Galois keys generated once per published element: 10-40 s each.
    "test_generated_networks_keep_the_plan_contract",
    "test_a_folded_conv_network_keeps_the_plan_contract",
    "test_generated_torch_networks_served_by_gunicorn_agree_with_torch",
}
# Parametrized cases that run networks of several activations (N=8192 with 7 primes, N=16384).
SLOW_PARAMETERS = ("[digits-cryptonets", "[digits-mlp3")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        uses = set(getattr(item, "fixturenames", ()))
        slow_case = "[redis" in item.name or any(p in item.name for p in SLOW_PARAMETERS)
        if item.path.stem in SLOW_MODULES or uses & PROCESS_FIXTURES or name in SLOW_TESTS or slow_case:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """One real gunicorn server with two workers for the whole session."""
    proc = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield proc
    proc.stop()


@pytest.fixture
def client(server) -> Client:
    with Client(server.url, timeout=60) as c:
        yield c
