"""What the network plans share (engine.neural, engine.deep): the chain of data levels of a SEAL
context, plaintexts encoded at a level, rotations, and the checks of their input ciphertexts."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_io, seal_memory, seal_raw
from heserve.engine.coefficients import CoefficientCodec, uniform_mod
from heserve.engine.linear import EvaluationError, RowCharges, SealRuntime
from heserve.engine.packing import slot_sum_lattice
from heserve.engine.rotations import MAX_HOPS, Rotator


class LeveledPlan(RowCharges):
    """Base of the network plans; a subclass sets `runtime` and calls `_read_levels()` first."""

    runtime: SealRuntime
    levels: list  # parms_id of every data level, top first (level = primes dropped)
    moduli: list[list[int]]  # the primes of every level
    single_steps: tuple[int, ...]  # the rotation steps of the single layout

    def _read_levels(self) -> None:
        data = self.runtime.context.first_context_data()
        self.levels, self.moduli = [], []
        while data is not None:
            self.levels.append(data.parms_id())
            self.moduli.append([m.value() for m in data.parms().coeff_modulus()])
            data = data.next_context_data()

    def _encode(self, values: np.ndarray | float, scale: float, level: int) -> sealapi.Plaintext:
        plain = sealapi.Plaintext()
        if isinstance(values, np.ndarray):
            self.runtime.encoder.encode(values.astype(np.float64).tolist(), self.levels[level], scale, plain)
        else:
            self.runtime.encoder.encode(float(values), self.levels[level], scale, plain)
        return plain

    def _rerandomized_input(self, ct: sealapi.Ciphertext, keys) -> sealapi.Ciphertext:
        """The input plus a fresh encryption of zero under the client's public key, before any key switch.

        The server cannot tell which secret a registered Galois or relinearization key switches from.
        One made from sigma_g(s) + D instead of sigma_g(s) adds sigma_g(c1) * D to every rotation by g:
        with the client's own c1, a term it chooses (it undoes the periodic sum, isolates a hidden
        unit). With the server's encryption of zero added first, every c1 a key switch sees carries
        u * p1 for a u the client never learns, and that term is uniform noise instead."""
        if keys.public is None:
            raise EvaluationError("a network's single layout needs the client's public key")
        out = sealapi.Ciphertext()  # out of place: the caller's ciphertext stays as sent
        self.runtime.evaluator.add(ct, keys.public.zero(ct.parms_id(), ct.scale), out)
        return out

    def _compile_result_mask(self, level: int, period: int) -> None:
        """A "slot-sums" result at `level`: output k is the sum of its slots k (mod period)."""
        self._result_codec = CoefficientCodec(self.runtime.context, self.levels[level])
        self._mask_lattice = slot_sum_lattice(self.runtime.params.poly_modulus_degree, period)

    def _output_mask(self, scale: float) -> sealapi.Plaintext:
        """Uniform mod q0 off the coefficients the slot sums read, zero on them (fresh each result).

        The sum of the slots k (mod s) over the rotations by multiples of s is the trace onto the
        polynomials in X^g, g = S/s (engine.packing.slot_sum_lattice): the mask leaves it as it was,
        and every other coefficient, which the output sum's rotations would have cancelled, is
        uniform noise to the client."""
        codec = self._result_codec
        (q,) = codec.moduli
        coefficients = uniform_mod(q, codec.n)
        coefficients[self._mask_lattice] = 0
        return codec.plaintext(codec.to_ntt(coefficients.reshape(1, -1)), scale)

    def _ciphertext(self, data: np.ndarray, level: int, scale: float) -> sealapi.Ciphertext:
        """A SEAL ciphertext in NTT form at `level` holding `data` (size, primes, N), computed here."""
        if seal_memory.available():
            return seal_memory.ciphertext(self.runtime.context, self.levels[level], data, scale)
        blob = seal_raw.build(self.levels[level], scale, data, seal_raw.seal_version())
        return seal_io.load(sealapi.Ciphertext, self.runtime.context, blob, "intermediate")

    def _coefficients(self, ct: sealapi.Ciphertext, level: int) -> np.ndarray:
        """A copy of the coefficients (size, primes, N) of a ciphertext this process's SEAL made."""
        if seal_memory.available():
            data = seal_memory.coefficients(ct).copy()
        else:
            data = seal_raw.polynomials(seal_raw.own_uncompressed(seal_io.dump(ct)))
        if data.shape[1:] != (len(self.moduli[level]), self.runtime.params.poly_modulus_degree):
            raise AssertionError(f"an intermediate ciphertext has shape {data.shape} at level {level}")
        return data

    def _publish_rotations(self, uses: Counter[int]) -> None:
        """The single layout's rotation steps and their uses per row, as evaluation makes them: a step
        whose every use was skipped (a giant block of all-zero weights) is not published, so no
        client registers a key for it and the plan contract's count holds."""
        self.single_step_uses = {step: count for step, count in sorted(uses.items()) if count > 0}
        self.single_steps = tuple(self.single_step_uses)

    @property
    def single_rotation_uses(self) -> tuple[int, ...]:
        return tuple(self.single_step_uses[s] for s in self.single_steps)

    def _rotator(self, keys) -> Rotator:
        """Rotations by every step of the single layout, composed from the client's registered keys.

        Where `keys` sets them: `rotation_hops` lowers how many registered rotations may compose one
        step, and `rotation_log` (a list) receives every step rotated by."""
        hops = min(MAX_HOPS, getattr(keys, "rotation_hops", MAX_HOPS))
        log = getattr(keys, "rotation_log", None)
        return Rotator(self.runtime.evaluator, keys.galois, self.single_steps, self.runtime.slots, hops, log)

    def _check_fresh(self, ct: sealapi.Ciphertext, what: str, scale: float, scale_bits: int) -> None:
        """A single-layout input: fresh (two polynomials, NTT form), top level, the layout's scale."""
        if ct.size() != 2 or not ct.is_ntt_form():
            raise EvaluationError(f"{what} is not a fresh ciphertext")
        if ct.parms_id() != self.levels[0]:
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not math.isclose(ct.scale, scale, rel_tol=1e-9):
            raise EvaluationError(f"{what} has scale 2^{math.log2(ct.scale):.2f}, expected 2^{scale_bits}")

    def _parse_coefficients(self, blob: bytes, what: str, scale: float, scale_bits: int) -> seal_raw.RawCiphertext:
        """A batch input read as raw coefficients: full, uncompressed (a compressed frame is refused,
        never inflated), top level, the layout's scale."""
        raw = seal_raw.parse(
            blob, self.runtime.params.poly_modulus_degree, self.moduli[0], what, allow_compressed=False
        )
        if list(raw.parms_id) != list(self.levels[0]):
            raise EvaluationError(f"{what} is not at the first data level of the model's parameters")
        if not math.isclose(raw.scale, scale, rel_tol=1e-9):
            raise EvaluationError(f"{what} has scale 2^{math.log2(raw.scale):.2f}, expected 2^{scale_bits}")
        return raw
