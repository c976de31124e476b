"""Bytes on the wire, and the end-to-end time they would take over a real link.

The benchmark runs client and server on one machine (loopback). What a client elsewhere sees is
estimated from measured numbers only:

    e2e_link = measured loopback end-to-end time
               + (bytes up + bytes down) * 8 / LINK_BITS_PER_S
               + one round trip (RTT_S) per request

(the loopback transfer is already in the measured time, so this slightly overstates the link's
cost). CountingTransport measures the HTTP bodies the SDK sends and receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heserve.client.transport import HTTPTransport, Response

LINK_BITS_PER_S = 100e6  # 100 Mbit/s
RTT_S = 0.020  # 20 ms round trip
LINK_LABEL = "100 Mbit/s, 20 ms RTT"


def link_seconds(loopback_s: float, bytes_up: float, bytes_down: float, requests: float) -> float:
    """The formula above, for one call: its loopback time, the bytes it sends and receives, its requests."""
    return loopback_s + (bytes_up + bytes_down) * 8 / LINK_BITS_PER_S + requests * RTT_S


@dataclass
class Traffic:
    requests: int = 0
    up: int = 0
    down: int = 0

    def per_call(self, calls: int, rows_per_call: int) -> dict:
        """Row fields: requests per call, request and response body bytes per row."""
        return {
            "requests_per_call": self.requests / calls,
            "wire_upload_bytes_per_row": self.up / calls / rows_per_call,
            "download_bytes_per_row": self.down / calls / rows_per_call,
        }


@dataclass
class CountingTransport:
    """The SDK's HTTP transport, counting the request and response bodies of inference calls."""

    inner: HTTPTransport = field(default_factory=HTTPTransport)
    records: list[tuple[int, int]] = field(default_factory=list)

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Response:
        response = self.inner.request(method, url, body, headers, timeout)
        if method == "POST" and url.endswith("/infer"):
            self.records.append((len(body or b""), len(response.content)))
        return response

    def close(self) -> None:
        self.inner.close()

    def mark(self) -> int:
        return len(self.records)

    def since(self, mark: int) -> Traffic:
        done = self.records[mark:]
        return Traffic(len(done), sum(up for up, _ in done), sum(down for _, down in done))
