"""CKKS parameter sets, the 128-bit security table and Galois element arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import tenseal.sealapi as sealapi

from heserve.engine.errors import EngineError

# Largest total coefficient-modulus size (bits) that keeps 128-bit classical security,
# from the homomorphic encryption standard as encoded in SEAL's hestdparms.h.
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

MIN_PRIME_BITS = 17
MAX_PRIME_BITS = 60


class ParameterError(EngineError):
    """Parameters that are malformed or weaker than 128-bit security."""


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set: ring degree and the bit sizes of the coefficient-modulus primes.

    With two primes or more, the last is SEAL's special (key-switching) prime and the others
    carry data. A single prime carries data and nothing switches keys: SEAL encrypts at that
    level directly (a public-key encryption there costs no modulus switch), and such a set takes
    no Galois or relinearization keys.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]

    @property
    def slot_count(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_prime_count(self) -> int:
        """Primes a fresh ciphertext carries: all but the special one, or the only one."""
        return max(1, len(self.coeff_mod_bit_sizes) - 1)

    @property
    def uses_key_switching(self) -> bool:
        return len(self.coeff_mod_bit_sizes) > 1

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    def validate(self) -> None:
        """Raise ParameterError unless the set is well formed and 128-bit secure."""
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_BITS_128:
            raise ParameterError(f"poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {n}")
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 1:
            raise ParameterError("coeff_mod_bit_sizes needs at least one prime")
        if any(not isinstance(b, int) or not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS for b in bits):
            raise ParameterError(
                f"each coefficient prime must have {MIN_PRIME_BITS}..{MAX_PRIME_BITS} bits, got {list(bits)}"
            )
        if self.total_bits > MAX_COEFF_BITS_128[n]:
            raise ParameterError(
                f"coefficient modulus of {self.total_bits} bits at N={n} is below 128-bit security "
                f"(at most {MAX_COEFF_BITS_128[n]} bits allowed)"
            )

    def to_json(self) -> dict:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
        }

    @classmethod
    def from_json(cls, data: object) -> CKKSParams:
        if not isinstance(data, dict):
            raise ParameterError("CKKS parameters must be a JSON object")
        try:
            n = data["poly_modulus_degree"]
            bits = data["coeff_mod_bit_sizes"]
        except KeyError as exc:
            raise ParameterError(f"CKKS parameters lack {exc.args[0]!r}") from None
        if not isinstance(n, int) or isinstance(n, bool):
            raise ParameterError("poly_modulus_degree must be an integer")
        if not isinstance(bits, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
            raise ParameterError("coeff_mod_bit_sizes must be a list of integers")
        params = cls(n, tuple(bits))
        params.validate()
        return params

    def seal_context(self) -> sealapi.SEALContext:
        """Build SEAL's context, enforcing 128-bit security inside SEAL as well."""
        self.validate()
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.poly_modulus_degree)
        parms.set_coeff_modulus(sealapi.CoeffModulus.Create(self.poly_modulus_degree, list(self.coeff_mod_bit_sizes)))
        context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        if not context.parameters_set():
            raise ParameterError(f"SEAL rejects the parameters: {context.parameters_error_message()}")
        return context


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """Galois element of a left rotation by `step` slots: 3^step mod 2N (negative steps wrap)."""
    slots = poly_modulus_degree // 2
    return pow(3, step % slots, 2 * poly_modulus_degree)
