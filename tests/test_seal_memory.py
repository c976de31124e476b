"""engine.seal_memory: numpy views of SEAL ciphertexts agree with SEAL's own serialization and decryption."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from heserve.engine import seal_io, seal_memory, seal_raw
from heserve.engine.linear import SealRuntime
from heserve.engine.params import CKKSParams


@pytest.fixture(scope="module")
def seal():
    runtime = SealRuntime(CKKSParams(8192, (36, 27, 27, 47)))
    keys = sealapi.KeyGenerator(runtime.context)
    encryptor = sealapi.Encryptor(runtime.context, keys.secret_key())
    decryptor = sealapi.Decryptor(runtime.context, keys.secret_key())
    relin = sealapi.RelinKeys()
    keys.create_relin_keys(relin)
    return runtime, encryptor, decryptor, relin


def _encrypt(runtime, encryptor, values: np.ndarray, scale: float) -> sealapi.Ciphertext:
    plain = sealapi.Plaintext()
    runtime.encoder.encode(values.tolist(), scale, plain)
    ct = sealapi.Ciphertext()
    encryptor.encrypt_symmetric(plain, ct)
    return ct


def _decrypt(runtime, decryptor, ct: sealapi.Ciphertext) -> np.ndarray:
    plain = sealapi.Plaintext()
    decryptor.decrypt(ct, plain)
    return np.array(runtime.encoder.decode_double(plain))


def _sizes_and_levels(runtime, encryptor) -> tuple[sealapi.Ciphertext, ...]:
    """A fresh ciphertext, its square (three polynomials) and the square one level down."""
    ct = _encrypt(runtime, encryptor, np.linspace(-1, 1, runtime.slots), 2.0**27)
    squared = sealapi.Ciphertext()
    runtime.evaluator.square(ct, squared)
    lower = sealapi.Ciphertext()
    runtime.evaluator.rescale_to_next(squared, lower)
    return ct, squared, lower


def test_the_layout_check_passes_on_the_pinned_seal():
    # Without it every batch network falls back to SEAL's compressed save, several times slower.
    assert seal_memory.available()


def test_views_equal_seals_serialization_at_every_size_and_level(seal):
    runtime, encryptor, _, _ = seal
    ct, squared, lower = _sizes_and_levels(runtime, encryptor)
    for obj, shape in ((ct, (2, 3, 8192)), (squared, (3, 3, 8192)), (lower, (3, 2, 8192))):
        view = seal_memory.coefficients(obj)
        assert view.shape == shape
        assert np.array_equal(view, seal_raw.polynomials(seal_raw.own_uncompressed(seal_io.dump(obj))))


def test_a_ciphertext_written_from_numpy_decrypts_and_computes_like_the_original(seal):
    runtime, encryptor, decryptor, relin = seal
    values = np.linspace(-1, 1, runtime.slots)
    ct = _encrypt(runtime, encryptor, values, 2.0**27)
    copy = seal_memory.ciphertext(runtime.context, ct.parms_id(), seal_memory.coefficients(ct).copy(), ct.scale)
    assert copy.is_ntt_form() and copy.size() == 2 and copy.parms_id() == ct.parms_id() and copy.scale == ct.scale
    np.testing.assert_allclose(_decrypt(runtime, decryptor, copy), values, atol=1e-5)
    # A three-polynomial ciphertext built in numpy (the batch layout's unrelinearized activations):
    # SEAL rescales and relinearizes it exactly as it does its own product (both are deterministic).
    squared = sealapi.Ciphertext()
    runtime.evaluator.square(ct, squared)
    rebuilt = seal_memory.ciphertext(runtime.context, squared.parms_id(), seal_memory.coefficients(squared).copy(),
                                     squared.scale)
    for obj in (squared, rebuilt):
        runtime.evaluator.rescale_to_next_inplace(obj)
        runtime.evaluator.relinearize_inplace(obj, relin)
    assert rebuilt.size() == 2
    assert np.array_equal(seal_memory.coefficients(rebuilt), seal_memory.coefficients(squared))
    # (Loose: a rescale of three polynomials rounds c2 too, and decryption multiplies that by s^2.)
    np.testing.assert_allclose(_decrypt(runtime, decryptor, rebuilt), values**2, atol=0.05)


def test_a_view_keeps_its_ciphertext_alive_and_writes_through(seal):
    runtime, encryptor, decryptor, _ = seal
    ct = _encrypt(runtime, encryptor, np.full(runtime.slots, 0.5), 2.0**27)
    view = seal_memory.coefficients(ct)
    expected = view.copy()
    del ct
    gc.collect()
    others = [_encrypt(runtime, encryptor, np.zeros(4), 2.0**27) for _ in range(8)]  # reuse freed memory, if any
    assert np.array_equal(view, expected)
    owner = view.base.base._owner
    view[...] = 0  # the zero ciphertext, written through the view
    assert not np.any(seal_memory.coefficients(owner))
    assert np.max(np.abs(_decrypt(runtime, decryptor, owner))) == 0.0
    assert others


def test_a_mismatched_shape_is_refused(seal):
    runtime, encryptor, _, _ = seal
    ct = _encrypt(runtime, encryptor, np.zeros(4), 2.0**27)
    with pytest.raises(seal_memory.LayoutError):
        seal_memory.ciphertext(runtime.context, ct.parms_id(), np.zeros((2, 2, 8192), dtype=np.uint64), ct.scale)


def test_dump_is_seals_uncompressed_serialization_at_every_size_and_level(seal):
    runtime, encryptor, _, _ = seal
    for obj in _sizes_and_levels(runtime, encryptor):
        written = seal_memory.dump(obj)
        assert written == seal_raw.own_uncompressed(seal_io.dump(obj))
        loaded = seal_io.load(sealapi.Ciphertext, runtime.context, written, "dumped")
        assert np.array_equal(seal_memory.coefficients(loaded), seal_memory.coefficients(obj))


def test_a_plaintext_written_from_numpy_multiplies_like_seals_own(seal):
    runtime, encryptor, _, _ = seal
    values = np.linspace(-1, 1, runtime.slots)
    ct = _encrypt(runtime, encryptor, values, 2.0**27)
    weights = np.cos(np.arange(runtime.slots))
    plain = sealapi.Plaintext()
    runtime.encoder.encode(weights.tolist(), ct.parms_id(), 2.0**20, plain)
    residues = seal_raw.plaintext_residues(seal_raw.own_uncompressed(seal_io.dump(plain)), 8192).copy()
    written = seal_memory.plaintext(ct.parms_id(), residues, plain.scale)
    assert written.is_ntt_form() and written.parms_id() == plain.parms_id() and written.scale == plain.scale
    assert seal_io.dump(written) == seal_io.dump(plain)
    products = []
    for p in (plain, written):
        product = sealapi.Ciphertext()
        runtime.evaluator.multiply_plain(ct, p, product)
        products.append(seal_memory.coefficients(product).copy())
    assert np.array_equal(products[0], products[1])


def test_the_coefficient_codec_gives_the_same_numbers_with_and_without_the_views(monkeypatch):
    from heserve.engine.coefficients import CoefficientCodec
    from heserve.engine.linear import LINEAR_PARAMS

    runtime = SealRuntime(LINEAR_PARAMS)
    codec = CoefficientCodec(runtime.context)
    values = np.random.default_rng(0).normal(0.0, 1.0, 30)
    results = []
    for available in (True, False):
        monkeypatch.setattr(seal_memory, "available", lambda a=available: a)
        plain = codec.encode(values, 2.0**30)
        ntt = codec.plaintext_residues(plain)
        back = codec.from_ntt(ntt)
        results.append((seal_io.dump(plain), ntt, back))
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][2], results[1][2])
    q = codec.moduli[0]
    coefficients = results[0][2][0]
    centred = coefficients.astype(np.int64) - np.where(coefficients > q // 2, q, 0)  # exact: q < 2^63
    np.testing.assert_allclose(centred[:30] / 2.0**30, values, atol=1e-8)
    assert not np.any(centred[30:])
