"""Two server instances behind nginx, keys in Redis: real gunicorn, nginx and redis-server processes.

The tests run in file order on one cluster; the last one kills an instance.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from heserve.benchmarks.cluster import start_cluster
from heserve.client import Client, NotFoundError, ServiceUnavailableError

from .helpers import infer_with_key

MODEL = "breast-cancer-logreg"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_cluster(tmp_path_factory.mktemp("cluster"), redis_timeout_seconds="1") as running:
        yield running


@pytest.fixture(scope="module")
def rows():
    return load_breast_cancer().data[:6]


def plaintext_logits(url: str, rows: np.ndarray) -> np.ndarray:
    with Client(url) as c:
        return c.infer_plaintext(MODEL, rows).reshape(-1)


def test_keys_registered_through_one_instance_serve_through_the_other(cluster, rows):
    with Client(cluster.a.url) as ca, Client(cluster.b.url) as cb:
        through_a = ca.model(MODEL)
        key_id = through_a.register()
        through_b = cb.model(MODEL, secret_context=through_a.secret_context)
        through_b.key_id = key_id
        logits = through_b.decision_function(rows).reshape(-1)
        assert cb.key_status(key_id)["key_id"] == key_id
    np.testing.assert_allclose(logits, plaintext_logits(cluster.b.url, rows), atol=1e-3)
    report = requests.get(cluster.nginx.url + "/v2/privacy", timeout=10).json()
    assert report["live_settings"]["key_store"] == "redis" and "Redis" in report["stored"][0]["where"]
    assert report["live_settings"]["registered_keys"] >= 1
    # The instances run with the operator's gunicorn configuration from deploy/.
    command_line = Path(f"/proc/{cluster.a.process.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"deploy/gunicorn.conf.py" in command_line


def test_erasure_through_one_instance_is_seen_by_the_other_at_once(cluster, rows):
    with Client(cluster.a.url) as ca, Client(cluster.b.url) as cb:
        model_a = ca.model(MODEL)
        model_a.predict(rows)  # instance A now holds the keys deserialized in its cache
        key_id = model_a.key_id
        cb.delete_key(key_id)
        with pytest.raises(NotFoundError, match="unknown, expired or erased"):
            infer_with_key(model_a, key_id, rows)
        with pytest.raises(NotFoundError):
            ca.key_status(key_id)


def test_nginx_spreads_requests_over_both_instances(cluster, rows):
    with Client(cluster.nginx.url) as c:
        model = c.model(MODEL)
        for _ in range(6):
            model.predict(rows[:1])
    served_by = {line.split()[-2] for line in cluster.nginx.access_log().splitlines() if "/infer" in line}
    assert served_by == {cluster.a.url.removeprefix("http://"), cluster.b.url.removeprefix("http://")}


def test_keys_survive_a_redis_restart_and_a_redis_crash(cluster, rows):
    with Client(cluster.nginx.url) as c:
        model = c.model(MODEL)
        expected = model.decision_function(rows)
        expires_in = c.key_status(model.key_id)["expires_in_seconds"]
        cluster.redis.restart()  # SIGTERM: clean shutdown
        np.testing.assert_allclose(model.decision_function(rows), expected, atol=1e-3)
        time.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk
        cluster.redis.process.kill()  # SIGKILL: a crash
        cluster.redis.process.wait()
        cluster.redis.start()
        np.testing.assert_allclose(model.decision_function(rows), expected, atol=1e-3)
        # The time to live went on counting; it did not restart.
        assert c.key_status(model.key_id)["expires_in_seconds"] <= expires_in


def test_redis_down_is_a_clear_503_and_the_service_recovers_by_itself(cluster, rows):
    workers = cluster.a.worker_pids() | cluster.b.worker_pids()
    with Client(cluster.nginx.url, timeout=30, unavailable_wait=0) as c:  # see each 503, do not wait it out
        model = c.model(MODEL)
        expected = model.decision_function(rows)
        cluster.redis.stop()
        try:
            for call in (
                lambda: model.predict(rows),
                lambda: c.key_status(model.key_id),
                lambda: c.model(MODEL).register(),
                lambda: c.delete_key(model.key_id),
            ):
                started = time.monotonic()
                with pytest.raises(ServiceUnavailableError, match="key registry is unavailable") as failure:
                    call()
                assert failure.value.status == 503
                assert time.monotonic() - started < 5  # redis_timeout_seconds=1: never a hang
            ready = requests.get(cluster.nginx.url + "/v2/health/ready", timeout=5)
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert requests.get(cluster.a.url + "/v2/health/live", timeout=5).status_code == 200
            scrape = requests.get(cluster.a.url + "/metrics", timeout=5)
            assert scrape.status_code == 200 and "heserve_key_store_up 0.0" in scrape.text
            report = requests.get(cluster.nginx.url + "/v2/privacy", timeout=5).json()
            assert report["live_settings"]["registered_keys"] is None
        finally:
            cluster.redis.start()
        # No restart of any instance: the next requests succeed.
        np.testing.assert_allclose(model.decision_function(rows), expected, atol=1e-3)
        assert requests.get(cluster.nginx.url + "/v2/health/ready", timeout=5).status_code == 200
    assert cluster.a.worker_pids() | cluster.b.worker_pids() == workers  # no worker died
    assert "Traceback" not in cluster.a.log() + cluster.b.log()


def test_the_sdk_waits_out_a_short_key_store_outage(cluster, rows):
    with Client(cluster.nginx.url, timeout=30) as c:
        model = c.model(MODEL)
        expected = model.decision_function(rows)
        cluster.redis.stop()
        restart = threading.Timer(1.0, cluster.redis.start)
        restart.start()
        try:
            started = time.monotonic()
            # 503 with Retry-After: 2 while Redis is down; the SDK waits 2 s and asks again, once.
            np.testing.assert_allclose(model.decision_function(rows), expected, atol=1e-3)
            assert 1.5 < time.monotonic() - started < 10
        finally:
            restart.join()


def test_an_instance_killed_under_load_loses_no_key_and_no_request(cluster, rows):
    clients = [Client(cluster.nginx.url, timeout=30) for _ in range(6)]
    models = [c.model(MODEL) for c in clients]
    expected = [m.decision_function(rows) for m in models]  # registers six keys
    # Encrypted once, sent over and over: the instances stay busy, so the kill lands mid-request.
    requests_ = [m.encrypt(rows, "single")[0] for m in models]
    stop = threading.Event()
    done: list[int] = []
    failures: list[str] = []

    def load(index: int) -> None:
        while not stop.is_set():
            try:
                results = models[index].send(requests_[index])
                assert len(results) == len(rows)
                done.append(index)
            except Exception as exc:  # every failure is counted and reported
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(models))]
    for thread in threads:
        thread.start()
    time.sleep(3)
    before_kill = len(done)
    workers = cluster.a.worker_pids()
    os.kill(cluster.a.process.pid, signal.SIGKILL)  # the whole instance, mid-request
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    assert before_kill > 0 and len(done) > before_kill
    assert failures == []  # nginx replayed the requests the dead instance held
    for model, want in zip(models, expected, strict=True):  # every key still there, served by B
        np.testing.assert_allclose(model.decision_function(rows), want, atol=1e-3)
    for c in clients:
        c.close()
