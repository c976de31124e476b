"""Leveled CKKS plans for networks of any depth (engine.compiler chooses parameters and layout).

Single layout. The client sends its row once: feature i in slot i, zero-padded to the input
period d0 (a power of two) and tiled over every slot, in one seeded ciphertext. The server
relies on nothing the client did:
0. the server's encryption of zero is added to the input before any key switch (see
   engine.levels.LeveledPlan._rerandomized_input: forged evaluation keys);
1. a rotate-and-sum over the rotations by d0, 2*d0, ..., S/2 makes the input periodic
   whatever was sent: every slot then holds the sum of its residue class mod d0, and the
   first layer's weights, divided by S/d0, read the average (the row, for an honest client).
   (It commutes with the first layer's rotations and d0-periodic plaintexts, so it could run a
   level down, after the rescale; but it would then add up the rescale noise of S/d_out slots:
   measured 1.5e-2 of outputs ~750 on a 4-activation network, against under 2e-3 before it.)
2. every dense layer is a matrix-vector product by the diagonal method on periodic vectors:
   with d = min(d_in, d_out) diagonals diag_j[i] = W[i mod d_out, (i + j) mod d_in],
   z = sum_j diag_j * rot(x, j) holds (Wx)[i mod d_out] in every slot i once a wide-to-narrow
   product has summed its d_in/d_out blocks (rotations by d_out, ..., d_in/2). The sum over j
   is split into baby steps (rotations of the input by k < b) and giant steps (Horner over
   rotations by b of the partial sums, with the diagonals pre-rotated in plaintext), and only
   power-of-two rotations need keys. Then rescale, and the bias;
3. every activation is u*(u + beta): one ciphertext product, relinearization and rescale;
4. the output layer leaves its column blocks unsummed and its bias spread over the S/d_out slots
   of each output's class: output k is the sum of the slots k (mod d_out), which the client
   takes ("slot-sums", as engine.neural's step 5). The server adds a fresh mask, uniform mod q0
   on every coefficient but the multiples of S/d_out (the ones that sum reads), so that each
   slot alone is noise: the partial products, the copies and the key-switching and rescaling
   noise of each slot are not readable, and a client that forged its public key (see the
   README's security notes) reads 2*d_out coefficients of the re-randomization, not N. (With
   d_out = S, more outputs than half the slots, each slot is its own class and none is masked.)
Every slot of every stage is thus a function of the one periodic input vector, and what a result
lets the client read is the outputs of that vector (padding outputs sum to the rounding residue
of zero weights).

Scales: every stage lands at the data scale 2^s exactly; a dense layer's plaintext scale is
2^s * q / c for the current scale c and the prime q its rescale drops, so a ciphertext
product's drift (c^2 / q) is absorbed by the next layer's weights.

Batch layout: ciphertext j holds feature j of up to S rows (row r in slot r). Dense layers are
modular matrix products on the ciphertexts' NTT coefficients (engine.modmath) with integer
weights round(W * p); activations are products of those coefficients (a ciphertext product is
pointwise in NTT form), left unrelinearized for the next layer's matrix product, whose outputs
SEAL rescales, relinearizes and rescales again: key switches only for the narrower layer. When
the activation's inputs are a layer's fresh products, they are not even rescaled (the next
layer drops that prime too), so a wide first layer never reaches SEAL. Coefficients move
between SEAL and numpy through engine.seal_memory; the primes of a matrix product and blocks
of units of such an activation run on two threads. No rotation: a chunk answers at most S
rows, each slot on its own.

Complex slots: nothing projects the slots on their real part, so an input X + iY yields
f(X + iY). For a network f of total degree D (2^activations), t -> f(X + tY) is a polynomial
of degree D, so f(X + iY) follows from D + 1 honest rows (t = t_0..t_D): quotas charge that.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import tenseal.sealapi as sealapi

from heserve.engine import seal_raw
from heserve.engine.compiler import DenseSchedule, NetworkSchedule, compile_network
from heserve.engine.levels import LeveledPlan
from heserve.engine.linear import EvaluationError, SealRuntime
from heserve.engine.modmath import ModularDense, mulmod_vector
from heserve.engine.params import galois_element
from heserve.engine.plan import DEFAULT_BATCH_THREADS
from heserve.engine.rotations import Rotator
from heserve.engine.spec import BATCH, SINGLE, SLOT_SUMS, EncryptionSpec, LayoutSpec

# Units per task of a deferred activation (a block's rows, ~1 MB per prime, stay in cache).
ACTIVATION_BLOCK = 32

# Seconds of server time one single-layout request is sized for (a quarter of the default deadline).
REQUEST_SECONDS_TARGET = 7.5


def _largest_weight(weights: np.ndarray) -> float:
    largest = float(np.max(np.abs(weights), initial=0.0))
    return largest if largest > 0 else 1.0


class _Dense:
    """A compiled dense layer: single-layout diagonals and batch integer weights."""

    def __init__(self, schedule: DenseSchedule, weights: np.ndarray, bias: np.ndarray):
        self.schedule = schedule
        self.weights = weights
        self.bias = bias
        self.single: list[list[sealapi.Plaintext | None]] = []  # [giant][baby]
        self.giant_top = 0  # the highest giant block with a non-zero diagonal
        self.single_bias: sealapi.Plaintext | None = None
        self.single_plain_scale = 0.0
        self.single_out_scale = 0.0
        self.batch: ModularDense | None = None
        self.batch_bias: np.ndarray | None = None  # (n_out, primes) residues
        self.batch_plain_scale = 0
        self.batch_out_scale = 0.0


class DeepNetworkPlan(LeveledPlan):
    """dense (act dense)*, any depth the parameters hold, for both layouts."""

    batch_reads_coefficients = True
    single_rows_answered = 1
    single_ciphertexts = 1
    single_results = 1

    def __init__(self, layers: list[dict], arrays: dict[str, np.ndarray], output_bound: float,
                 runtime_for) -> None:
        self.schedule: NetworkSchedule = compile_network(layers, arrays, output_bound)
        self.runtime: SealRuntime = runtime_for(self.schedule.params)
        self.layers = layers
        self.n_features = self.schedule.widths[0]
        self.n_outputs = self.schedule.widths[-1]
        self.betas = [float(layer["beta"]) for layer in layers if layer["type"] == "act"]
        self.complex_rows = self.schedule.degree + 1
        self._read_levels()
        if len(self.levels) != self.schedule.depth + 1:
            raise ValueError("the SEAL context does not have one level per multiplicative operation")
        self.data_scale = 2.0**self.schedule.scale_bits
        self.input_scale_bits = self.schedule.scale_bits
        self.input_scale = self.data_scale
        self.dense = [
            _Dense(s, np.asarray(arrays[layers[s.index]["weights"]], dtype=np.float64),
                   np.asarray(arrays[layers[s.index]["bias"]], dtype=np.float64))
            for s in self.schedule.dense
        ]
        self._compile_single()
        self._compile_batch()
        uses = self.schedule.rotation_uses()
        for layer in self.dense:  # one giant rotation per block below the highest with a term
            if layer.schedule.giant > 1:
                uses[layer.schedule.baby] -= (layer.schedule.giant - 1) - layer.giant_top
        self._publish_rotations(uses)
        self.rows_per_request = int(np.clip(REQUEST_SECONDS_TARGET // self.schedule.single_row_seconds(), 1, 64))

    # --- compilation -------------------------------------------------------------------------
    def _after_activation(self, scale: float, level: int) -> float:
        """SEAL's scale after u*(u + beta) at `level` (a product, then a rescale)."""
        return (scale * scale) / self.moduli[level][-1]

    def _compile_single(self) -> None:
        slots = self.runtime.slots
        slot = np.arange(slots)
        scale = self.data_scale
        self.single_scales = [{"stage": "input", "level": 0, "scale_log2": round(math.log2(scale), 4)}]
        for number, layer in enumerate(self.dense):
            s = layer.schedule
            q = self.moduli[s.level][-1]
            weights = np.zeros((s.d_out, s.d_in))
            weights[: s.n_out, : s.n_in] = layer.weights
            if number == 0:
                weights *= s.d_in / slots  # the periodic sum adds S/d0 copies: read their average
            layer.single_plain_scale = self.data_scale * q / scale
            if s.summed_by_client:
                # Output k is the sum of the S/d_out slots k (mod d_out): S/max(d_in, d_out) copies
                # of the output (its column blocks unsummed), so the weights read 1/copies of it. A
                # scale up to that many times larger keeps their precision (the same integer
                # polynomial) as far as the result's scale, 2^s times it, stays under q0 by SEAL's
                # bound (log2(scale) + 1 < its bits).
                copies = slots // max(s.d_in, s.d_out)
                weights /= copies
                headroom = self.moduli[0][0].bit_length() - self.schedule.scale_bits - 2
                layer.single_plain_scale *= min(copies, 2**headroom)
            layer.single_out_scale = (scale * layer.single_plain_scale) / q
            for g in range(s.giant):
                row = []
                for k in range(s.baby):
                    j = g * s.baby + k
                    diagonal = weights[slot % s.d_out, (slot + j) % s.d_in]
                    # Pre-rotated by -g*b: the giant step's rotation brings it back in place.
                    values = np.roll(diagonal, g * s.baby)
                    # A zero plaintext would make SEAL's product transparent: skip the term.
                    row.append(self._encode(values, layer.single_plain_scale, s.level) if np.any(values) else None)
                layer.single.append(row)
            if not any(p for row in layer.single for p in row):
                raise ValueError(f"layer {s.index} has no non-zero weight")
            layer.giant_top = max(g for g, row in enumerate(layer.single) if any(row))
            bias = np.zeros(s.d_out)
            bias[: s.n_out] = layer.bias
            if s.summed_by_client:
                bias *= s.d_out / slots  # one share in each of the S/d_out slots that output k sums
            layer.single_bias = self._encode(bias[slot % s.d_out], layer.single_out_scale, s.level + 1)
            scale = layer.single_out_scale
            self.single_scales.append({"stage": f"dense {s.index}", "level": s.level + 1,
                                       "scale_log2": round(math.log2(scale), 4),
                                       "weights_scale_log2": round(math.log2(layer.single_plain_scale), 4)})
            if number < len(self.betas):
                level = s.level + 1
                layer.single_beta = self._encode(self.betas[number], scale, level)
                scale = self._after_activation(scale, level)
                self.single_scales.append({"stage": f"activation {s.index + 1}", "level": level + 1,
                                           "scale_log2": round(math.log2(scale), 4)})
        self.single_output_scale = scale
        self._compile_result_mask(self.schedule.depth, self.schedule.dense[-1].d_out)

    def _compile_batch(self) -> None:
        """Integer weights round(W * p) for the modular matrix products, p = 2^s * (primes the layer's
        rescales drop) / c for the input scale c, so that every rescaled stage lands at 2^s.

        An activation followed by a narrower layer runs in numpy on the NTT coefficients, where a
        ciphertext product is pointwise, neither relinearized nor rescaled: the next layer's matrix
        product takes the three polynomials of u*(u + beta) at ~2^(2s), and its outputs drop two
        primes around SEAL's relinearization (schedule.batch_fused), three when the fused layer's
        own outputs were fresh products, left unrescaled (schedule.batch_deferred): digits-cryptonets'
        256 first units then cost no SEAL call at all. A deferred layer's weights and the next one's
        share the scale the three primes leave, p^2 * p' = 2^s * q1 q2 q3 / c^2, split so that both
        layers' integer weights have the same size (digits-cryptonets: 2^16.8 and 2^20.4, its
        second layer's weights being 12x smaller; logits within 2.5e-4 of plaintext over 4,096 rows,
        against 5-6e-4 for an even 2^18 each and ~3e-4 with the rescale), and each product takes
        one limb less. Other activations are SEAL's product, relinearization and rescale.
        Either way the level budget is the single layout's. (Weights of ~2^(s/2) everywhere would
        save a limb, but their rounding costs 1e-4 of the output on a 4-activation network.)"""
        sched = self.schedule
        scale = self.data_scale
        for number, layer in enumerate(self.dense):
            level = sched.batch_level(number)
            moduli = self.moduli[level]
            drops = sched.batch_drops(number)
            dropped = math.prod(float(q) for q in moduli[len(moduli) - drops:])  # 1 for no drop
            if sched.batch_deferred(number):
                # p^2 * p' = 2^s q1 q2 q3 / c^2 =: B, split so that both layers' integer weights have
                # the same size (p max|W| = p' max|W'|): their rounding errors then weigh alike.
                joint = math.prod(float(q) for q in moduli[len(moduli) - sched.batch_drops(number + 1):])
                budget = self.data_scale * joint / scale**2
                ratio = _largest_weight(self.dense[number + 1].weights) / _largest_weight(layer.weights)
                plain_scale = max(1, round((budget * ratio) ** (1 / 3)))
            else:
                plain_scale = max(1, round(self.data_scale * dropped / scale))
            layer.batch_plain_scale = plain_scale
            layer.batch = ModularDense(np.round(layer.weights * plain_scale), moduli)
            product_scale = scale * plain_scale
            layer.batch_bias = np.array(
                [[round(float(b) * product_scale) % m for m in moduli] for b in layer.bias], dtype=np.uint64
            )
            layer.batch_product_scale = product_scale
            scale = product_scale / dropped
            if number < len(self.betas):
                out_level = level + drops
                if sched.batch_fused(number):
                    layer.batch_beta = np.array(
                        [round(self.betas[number] * scale) % q for q in self.moduli[out_level]], dtype=np.uint64
                    )
                    scale = scale * scale
                else:
                    layer.batch_beta = self._encode(self.betas[number], scale, out_level)
                    scale = self._after_activation(scale, out_level)
        self.batch_output_scale = scale

    # --- description -------------------------------------------------------------------------
    def spec(self) -> EncryptionSpec:
        sched = self.schedule
        return EncryptionSpec(
            ckks=sched.params,
            input_scale_bits=self.input_scale_bits,
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            relin_keys_needed=bool(self.betas),
            layouts={
                SINGLE: LayoutSpec(
                    SINGLE,
                    capacity=1,
                    rotation_steps=self.single_steps,
                    rotation_uses=self.single_rotation_uses,
                    period=sched.input_period,
                    method="periodic-diagonal-bsgs",
                    # The PackedLayout form the SDK already packs: one ciphertext, period d0.
                    packing={"ciphertexts": 1, "period": sched.input_period, "window": 1, "hidden": 1,
                             "baby": 1, "out_period": sched.dense[-1].d_out},
                    rows_charged=self.single_rows_charged,
                    rows_per_request=self.rows_per_request,
                    encoding=SLOT_SUMS,
                    result_period=sched.dense[-1].d_out,
                ),
                BATCH: LayoutSpec(
                    BATCH, capacity=self.runtime.slots, method="modular-matmul", seeded=False,
                    rows_charged=self.batch_rows_charged,
                ),
            },
            extra={"multiplicative_depth": sched.depth, "plan": self.plan()},
        )

    def plan(self) -> dict:
        sched, n = self.schedule, self.schedule.params.poly_modulus_degree
        return {
            "layers": [layer["type"] if layer["type"] == "dense" else "x*(x+beta)" for layer in self.layers],
            "shape": list(sched.widths),
            "depth": sched.depth,
            "coeff_modulus": [int(q) for q in self.moduli[0]],
            "scales_log2": {"data": sched.scale_bits, "output": round(math.log2(self.single_output_scale), 3)},
            "levels": self.single_scales,  # the scale after every stage, and the level it lands at
            "rotation_steps": list(self.single_steps),
            "galois_elements": [galois_element(s, n) for s in self.single_steps],
            "single": {
                "input_period": sched.input_period,
                "dense": [{"source": d.source, "d_in": d.d_in, "d_out": d.d_out, "baby": d.baby, "giant": d.giant,
                           "level": d.level, "rotations": d.rotations()} for d in sched.dense],
                "ops": sched.single_ops(),
                "rows_answered": self.single_rows_answered,
            },
            "batch": {"ops": sched.batch_ops(), "rows_answered": self.batch_rows_answered},
        }

    def required_galois_elements(self, layout: str) -> list[int]:
        if layout != SINGLE:
            return []
        return [galois_element(s, self.schedule.params.poly_modulus_degree) for s in self.single_steps]

    def plaintext(self, x: np.ndarray) -> np.ndarray:
        h = np.atleast_2d(np.asarray(x, dtype=np.float64))
        for number, layer in enumerate(self.dense):
            h = h @ layer.weights.T + layer.bias
            if number < len(self.betas):
                h = h * (h + self.betas[number])
        return h

    # --- single layout -----------------------------------------------------------------------
    def check_input(self, ct: sealapi.Ciphertext, what: str, layout: str | None = SINGLE) -> None:
        self._check_fresh(ct, what, self.input_scale, self.input_scale_bits)

    def _rotate_and_sum(self, ct: sealapi.Ciphertext, steps, rotator: Rotator) -> sealapi.Ciphertext:
        ev = self.runtime.evaluator
        for step in steps:
            summed = sealapi.Ciphertext()  # out of place: the caller's ciphertext stays as sent
            ev.add(ct, rotator.rotated(ct, step), summed)
            ct = summed
        return ct

    def _dense_single(self, layer: _Dense, x: sealapi.Ciphertext, rotator: Rotator) -> sealapi.Ciphertext:
        ev, s = self.runtime.evaluator, layer.schedule
        babies = [x]
        for k in range(1, s.baby):
            low = k & -k
            babies.append(rotator.rotated(babies[k - low], low))
        acc = None
        for g in reversed(range(layer.giant_top + 1)):
            if acc is not None:
                acc = rotator.rotated(acc, s.baby)
            for k, plain in enumerate(layer.single[g]):
                if plain is None:
                    continue
                term = sealapi.Ciphertext()
                ev.multiply_plain(babies[k], plain, term)
                if acc is None:
                    acc = term
                else:
                    ev.add_inplace(acc, term)
        ev.rescale_to_next_inplace(acc)
        acc = self._rotate_and_sum(acc, s.sum_steps(), rotator)
        ev.add_plain_inplace(acc, layer.single_bias)
        return acc

    def _activation(self, ct: sealapi.Ciphertext, beta: sealapi.Plaintext, relin) -> sealapi.Ciphertext:
        ev = self.runtime.evaluator
        shifted = sealapi.Ciphertext()
        ev.add_plain(ct, beta, shifted)
        ev.multiply_inplace(shifted, ct)
        ev.relinearize_inplace(shifted, relin)
        ev.rescale_to_next_inplace(shifted)
        return shifted

    def evaluate_single(self, cts: list[sealapi.Ciphertext], keys) -> list[sealapi.Ciphertext]:
        if len(cts) != 1:
            raise EvaluationError(f"one sample takes 1 ciphertext, got {len(cts)}")
        self.check_input(cts[0], "input ciphertext 0")
        rotator = self._rotator(keys)
        x = self._rotate_and_sum(self._rerandomized_input(cts[0], keys), self.schedule.periodic_steps, rotator)
        for number, layer in enumerate(self.dense):
            x = self._dense_single(layer, x, rotator)
            if number < len(self.betas):
                x = self._activation(x, layer.single_beta, keys.relin)
        self.runtime.evaluator.add_plain_inplace(x, self._output_mask(x.scale))
        return [x]

    # --- batch layout ------------------------------------------------------------------------
    def parse_batch_input(self, blob: bytes, what: str) -> seal_raw.RawCiphertext:
        return self._parse_coefficients(blob, what, self.input_scale, self.input_scale_bits)

    def _dense_batch(self, layer: _Dense, inputs: list[np.ndarray], level: int, pool: Executor) -> np.ndarray:
        """(n_out, size, primes, N) coefficients of W_int @ inputs + bias, mod each prime of the level
        (size: the inputs' polynomials, 2 or 3); the primes are independent, one task each."""
        moduli = self.moduli[level]
        n = self.runtime.params.poly_modulus_degree
        size = inputs[0].shape[0]
        out = np.empty((layer.schedule.n_out, size, len(moduli), n), dtype=np.uint64)

        def one_prime(prime: int) -> bool:
            q = moduli[prime]
            limbs = layer.batch.gather(prime, [data[:, prime, :] for data in inputs])
            if limbs is None:
                return False
            y = layer.batch.apply(prime, limbs).reshape(layer.schedule.n_out, size, n)
            c0 = y[:, 0]
            c0 += layer.batch_bias[:, prime].reshape(-1, 1)  # a constant polynomial is constant in NTT form
            np.subtract(c0, np.uint64(q), out=c0, where=c0 >= q)
            out[:, :, prime, :] = y
            return True

        if not all(pool.map(one_prime, range(len(moduli)))):
            raise EvaluationError("ciphertext coefficients lie outside their modulus")
        return out

    def _activation_batch(self, data: np.ndarray, beta: np.ndarray, level: int,
                          out: np.ndarray | None = None) -> np.ndarray:
        """The three polynomials of u*(u + beta) from u = (c0, c1) in NTT form, prime by prime:
        (c0 * (c0 + beta), c1 * (2 c0 + beta), c1 * c1), unrelinearized. data: (2, primes, N) for
        one unit, or (units, 2, primes, N) for a block of them (out: the same with 3 polynomials)."""
        if out is None:
            out = np.empty((*data.shape[:-3], 3, *data.shape[-2:]), dtype=np.uint64)
        for prime, q in enumerate(self.moduli[level]):
            c0, c1 = data[..., 0, prime, :], data[..., 1, prime, :]
            shifted = c0 + beta[prime]
            np.subtract(shifted, np.uint64(q), out=shifted, where=shifted >= q)
            out[..., 0, prime, :] = mulmod_vector(c0, shifted, q)
            shifted += c0
            np.subtract(shifted, np.uint64(q), out=shifted, where=shifted >= q)
            out[..., 1, prime, :] = mulmod_vector(c1, shifted, q)
            out[..., 2, prime, :] = mulmod_vector(c1, c1, q)
        return out

    def evaluate_batch(self, inputs: list[seal_raw.RawCiphertext], rows: int, keys,
                       threads: int = DEFAULT_BATCH_THREADS) -> list[sealapi.Ciphertext]:
        if len(inputs) != self.n_features:
            raise EvaluationError(f"batch layout needs {self.n_features} ciphertexts per chunk, got {len(inputs)}")
        # numpy and BLAS release the GIL, SEAL's calls through tenseal do not: a second thread runs
        # one prime's matrix product beside another's, and one block of a deferred activation's
        # units beside another (numpy beside SEAL's rescales gained nothing: SEAL holds the GIL).
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return self._evaluate_batch([raw.data for raw in inputs], keys, pool)

    def _evaluate_batch(self, current: list[np.ndarray], keys, pool: Executor) -> list[sealapi.Ciphertext]:
        sched, ev = self.schedule, self.runtime.evaluator
        results: list[sealapi.Ciphertext] = []
        for number, layer in enumerate(self.dense):
            level = sched.batch_level(number)
            products = self._dense_batch(layer, current, level, pool)
            current = []  # the inputs' memory goes before the next layer's is allocated
            last = number == len(self.dense) - 1
            drops = sched.batch_drops(number)
            out_level = level + drops
            if sched.batch_deferred(number):
                # Never in SEAL: numpy's products, blocks of units on the pool's threads.
                current = list(self._deferred_activation(products, layer.batch_beta, level, pool))
                del products
                continue
            fused = not last and sched.batch_fused(number)
            for k in range(len(products)):
                ct = self._ciphertext(products[k], level, layer.batch_product_scale)
                for _ in range(drops - 1):
                    ev.rescale_to_next_inplace(ct)
                if ct.size() == 3:
                    # Relinearized at ~2^(2s), before its last rescale: the rescale divides the key
                    # switch's noise too (relinearized at 2^s, digits-cryptonets' logits drift 100x more).
                    ev.relinearize_inplace(ct, keys.relin)
                ev.rescale_to_next_inplace(ct)
                if last:
                    results.append(ct)
                elif fused:
                    current.append(self._activation_batch(self._coefficients(ct, out_level), layer.batch_beta,
                                                          out_level))
                else:
                    current.append(self._coefficients(self._activation(ct, layer.batch_beta, keys.relin),
                                                      out_level + 1))
            del products
        return results

    def _deferred_activation(self, products: np.ndarray, beta: np.ndarray, level: int, pool: Executor) -> np.ndarray:
        """u*(u + beta) of every unit's products, in blocks of units on the pool's threads: each numpy
        pass is then long enough for two threads to run side by side (one unit per task hands the
        GIL over every few microseconds, slower than one thread), and one array holds them all (an
        array allocated per task on a pool thread costs fresh pages every time)."""
        squares = np.empty((len(products), 3, *products.shape[2:]), dtype=np.uint64)

        def block(start: int) -> None:
            end = start + ACTIVATION_BLOCK
            self._activation_batch(products[start:end], beta, level, squares[start:end])

        list(pool.map(block, range(0, len(products), ACTIVATION_BLOCK)))
        return squares
