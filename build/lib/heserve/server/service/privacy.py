"""The privacy report served at GET /v2/privacy, written for a data-protection officer."""

from __future__ import annotations

from heserve.server.service.keystore import KeyStoreUnavailable
from heserve.server.service.services import Services


def report(svc: Services) -> dict:
    config = svc.config
    models = {
        name: {
            "scheme": "CKKS",
            "ckks": model.spec.ckks.to_json(),
            "security_level_bits": 128,
            "multiplicative_depth": model.spec.to_json().get("multiplicative_depth", 1),
        }
        for name, model in sorted(svc.registry.models.items())
    }
    return {
        "summary": (
            "Inputs and predictions are encrypted on the client under CKKS with a secret key that never "
            "leaves it. This server computes on ciphertexts only, cannot decrypt them, and keeps nothing "
            "about a request but public evaluation keys (for a limited time) and an audit line without payload."
        ),
        "processed": [
            "ciphertexts of input features (encrypted on the client; never decrypted here)",
            "the client's public key, with which every result is re-randomized before it leaves the server",
            "public evaluation keys: Galois keys for the rotations a network needs, relinearization keys",
        ],
        "stored": [
            {
                "what": "public evaluation keys and their metadata (parameters, creation and expiry, owner tenant)",
                "where": svc.keys.store.describe(),
                "retention_seconds": config.key_ttl_seconds,
                "erasure": "DELETE /v2/keys/{key_id} erases it at once from the store and from every worker "
                "of every instance; "
                "it is also erased when its time to live passes (its bytes within "
                f"{config.key_sweep_interval_seconds:g} s after that)",
            },
            {
                "what": "quota counters: requests and evaluated rows per tenant over the last hour, and the ids, "
                "sizes and expiries of its live keys",
                "where": svc.quotas.describe(),
                "retention_seconds": 3600,
                "erasure": "by expiry: counters after an hour, key entries with their keys",
            },
            {
                "what": "audit lines: time, request id, tenant, method, route, model, key id, status, sizes, duration",
                "where": "the server's log stream (stderr), retained as the operator's log policy says",
                "retention_seconds": None,
                "erasure": "by the operator's log rotation",
            },
        ],
        "never_stored": [
            "input features, in clear or encrypted: ciphertexts live in memory for one request only",
            "predictions, in clear or encrypted",
            "secret keys: the server refuses any registration that carries one",
            "decrypted values: no endpoint accepts them (sharing CKKS decryptions enables key recovery, "
            "Li and Micciancio, EUROCRYPT 2021)",
        ],
        "security": {
            "standard": "Homomorphic Encryption Standard, 128-bit classical security (coefficient modulus at most "
            "109/218/438/881 bits for N = 4096/8192/16384/32768); weaker parameters are refused",
            "models": models,
            "result_ciphertexts": (
                "carry only the model's outputs: every other slot or coefficient is zero, an output or "
                "uniform noise; each is re-randomized with the client's public key, so no result is a fixed "
                "function of the client's ciphertexts and the weights"
            ),
        },
        "live_settings": {
            "key_ttl_seconds": config.key_ttl_seconds,
            "plaintext_inference_enabled": config.allow_plaintext,
            "authentication_required": svc.api_keys.enabled,
            "key_store": svc.config.key_store,
            "registered_keys": _registered_keys(svc),
            "quotas_per_tenant": svc.quotas.limits(),
            "per_request_limits": {
                "max_body_bytes": config.max_body_bytes,
                "max_request_elements": config.max_request_elements,
                "max_single_rows": config.max_single_rows,
                "max_batch_chunks": config.max_batch_chunks,
                "max_request_seconds": config.max_request_seconds,
                "max_worker_rss_bytes": config.max_worker_rss_bytes,
            },
        },
        "legal_basis_notes": (
            "Data minimisation and storage limitation (GDPR art. 5(1)(c),(e); Morocco law 09-08 art. 3; CCPA "
            "§1798.100(c)) follow from the above: no personal data is processed in the clear or kept. The "
            "right to erasure (GDPR art. 17; law 09-08 art. 8; CCPA §1798.105) applies to the evaluation keys, "
            "the only stored item linked to a client, through DELETE /v2/keys/{key_id}."
        ),
    }


def _registered_keys(svc: Services) -> int | None:
    try:
        return svc.keys.store.count()
    except KeyStoreUnavailable:
        return None  # the report stays available while the key store is down
