"""Prometheus metrics through a real two-worker gunicorn server: totals are right whichever worker answers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import requests

from heserve.client import Client

from .serverproc import start_server


def scrape(url: str) -> str:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_counters_add_up_across_workers(server):
    before = scrape(server.url)
    for _ in range(20):
        assert requests.get(f"{server.url}/v2/models/does-not-exist", timeout=10).status_code == 404
    with Client(server.url) as client:
        model = client.model("diabetes-linreg")
        model.predict(np.zeros((1, 10)), layout="single")
        model.predict(np.zeros((300, 10)), layout="batch")
    texts = [scrape(server.url) for _ in range(4)]  # answered by both workers
    for text in texts:
        grown = value(text, "heserve_requests_total", route="/v2/models/<name>", status="404") - value(
            before, "heserve_requests_total", route="/v2/models/<name>", status="404"
        )
        assert grown == 20
        assert value(text, "heserve_inference_seconds_count", model="diabetes-linreg", layout="batch") >= 1
        assert value(text, "heserve_inference_seconds_count", model="diabetes-linreg", layout="single") >= 1
        assert value(text, "heserve_request_bytes_total", route="/v2/models/<name>/infer") > 0
        assert value(text, "heserve_registered_keys") >= 1
    assert not re.search(r"[0-9a-f]{32}", texts[0])  # no key ids (or anything client-specific) in labels


def test_the_metrics_directory_made_for_a_server_is_removed_when_it_stops(tmp_path):
    server = start_server(tmp_path, workers=1, access_log="true")
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    directory = Path(next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode())
    requests.get(f"{server.url}/v2/models", timeout=10)
    assert any(directory.glob("*.db"))
    server.stop()
    assert not directory.exists()
    assert '"logger":"gunicorn.access"' in server.log()  # opted in here


def test_access_log_is_off_unless_asked_for(server):
    requests.get(f"{server.url}/v2/models", timeout=10)
    assert '"logger":"gunicorn.access"' not in server.log()


def test_rotations_added_by_compact_keys_are_counted(server):
    """heserve_model_composed_rotations: what compact rotation keys cost the server, per model. digits-mlp
    with keys for 1, 8, 64 and 512 rotates 28 times a row instead of 12: 16 more per row, 0 with every key."""
    from heserve.models.nets import digits_split

    images = digits_split()[1][:3]
    before = value(scrape(server.url), "heserve_model_composed_rotations_total", model="digits-mlp")
    with Client(server.url) as client:
        client.model("digits-mlp").predict(images[:1], layout="single")
        compact = client.model("digits-mlp", rotation_keys=4)
        compact.predict(images, layout="single")
        compact.delete_key()
    texts = [scrape(server.url) for _ in range(4)]  # answered by both workers
    for text in texts:
        assert value(text, "heserve_model_composed_rotations_total", model="digits-mlp") - before == 16 * len(images)
