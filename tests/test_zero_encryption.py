"""engine.zero_encryption: what every result is re-randomized with is a fresh public-key encryption of
zero, at the result's level and scale, with SEAL's distributions and no more noise than SEAL's own."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from heserve.engine import seal_memory, zero_encryption
from heserve.engine.linear import LINEAR_PARAMS, SealRuntime
from heserve.engine.neural import NETWORK_PARAMS
from heserve.engine.zero_encryption import ZeroEncryptor


def _levels(context: sealapi.SEALContext):
    data = context.first_context_data()
    while data is not None:
        yield data
        data = data.next_context_data()


@pytest.fixture(scope="module", params=[LINEAR_PARAMS, NETWORK_PARAMS], ids=["linear", "network"])
def keys(request):
    runtime = SealRuntime(request.param)
    keygen = sealapi.KeyGenerator(runtime.context)
    public = sealapi.PublicKey()
    keygen.create_public_key(public)
    encryptor = sealapi.Encryptor(runtime.context, public)
    return runtime, public, encryptor, sealapi.Decryptor(runtime.context, keygen.secret_key())


def _error(runtime, encryptor, decryptor, parms_id, zero_of) -> float:
    """Largest slot error of an encryption of x at scale 2^30 after adding zero_of(parms_id, scale)."""
    values = np.linspace(-1.0, 1.0, runtime.slots)
    plain = sealapi.Plaintext()
    runtime.encoder.encode(values.tolist(), parms_id, 2.0**30, plain)
    ct = sealapi.Ciphertext()
    encryptor.encrypt(plain, ct)
    runtime.evaluator.add_inplace(ct, zero_of(parms_id, ct.scale))
    out = sealapi.Plaintext()
    decryptor.decrypt(ct, out)
    return float(np.max(np.abs(np.array(runtime.encoder.decode_double(out)) - values)))


def _seal_zero(encryptor):
    def zero_of(parms_id, scale):
        zero = sealapi.Ciphertext()
        encryptor.encrypt_zero(parms_id, zero)
        zero.scale = scale
        return zero

    return zero_of


def test_zeros_decrypt_to_noise_no_larger_than_seals_at_every_level(keys):
    runtime, public, encryptor, decryptor = keys
    zeros = ZeroEncryptor(runtime.context, public)
    for data in _levels(runtime.context):
        parms_id = list(data.parms_id())
        zero = zeros.zero(parms_id, 2.0**30)
        assert zero.parms_id() == parms_id and zero.scale == 2.0**30 and zero.is_ntt_form() and zero.size() == 2
        ours = _error(runtime, encryptor, decryptor, parms_id, zeros.zero)
        seals = _error(runtime, encryptor, decryptor, parms_id, _seal_zero(encryptor))
        assert ours < 3 * seals, f"level {data.chain_index()}: {ours:.2e} against SEAL's {seals:.2e}"


def test_the_bulk_path_serves_the_contexts_without_a_special_prime(keys):
    runtime, public, _, _ = keys
    zeros = ZeroEncryptor(runtime.context, public)
    assert (zeros._key is not None) == (not runtime.context.using_keyswitching())
    # One copy of the public key either way: what a worker's key cache charges for it.
    assert (zeros._key is None) != (zeros._encryptor is None)
    if zeros._key is not None:
        primes = len(runtime.params.coeff_mod_bit_sizes)
        assert zeros._key.nbytes == 2 * primes * runtime.params.poly_modulus_degree * 8


def test_every_zero_is_fresh(keys):
    runtime, public, _, _ = keys
    zeros = ZeroEncryptor(runtime.context, public)
    parms_id = list(runtime.first_parms_id)
    a, b = (seal_memory.coefficients(zeros.zero(parms_id, 1.0)).copy() for _ in range(2))
    assert not np.array_equal(a[1], b[1]) and not np.array_equal(a[0], b[0])


def test_the_sampled_distributions_are_seals():
    u = zero_encryption.ternary(300_000)
    counts = np.bincount(u + 1, minlength=3) / len(u)
    assert set(np.unique(u)) == {-1, 0, 1} and np.all(np.abs(counts - 1 / 3) < 0.005)
    e = zero_encryption.centered_binomial(300_000)
    assert e.min() >= -21 and e.max() <= 21
    assert abs(e.mean()) < 0.03 and abs(e.var() - 10.5) < 0.15


def test_the_noise_is_the_same_without_numpys_bitwise_count(monkeypatch):
    monkeypatch.delattr(np, "bitwise_count")
    e = zero_encryption.centered_binomial(300_000)
    assert e.min() >= -21 and e.max() <= 21
    assert abs(e.mean()) < 0.03 and abs(e.var() - 10.5) < 0.15


def test_without_the_memory_layout_seals_encryptor_does_the_work(keys, monkeypatch):
    runtime, public, encryptor, decryptor = keys
    monkeypatch.setattr(seal_memory, "available", lambda: False)
    zeros = ZeroEncryptor(runtime.context, public)
    assert zeros._key is None
    parms_id = list(runtime.first_parms_id)
    assert _error(runtime, encryptor, decryptor, parms_id, zeros.zero) < 2e-4
