"""Compile a network (dense and polynomial-activation layers, any number) to a leveled CKKS plan.

Input: the layers of a network artifact, alternating dense (W, b) and act (u -> u*(u + beta)),
starting and ending with dense. (models.export folds Conv2d, AvgPool2d, BatchNorm and the
scalars of a*x^2 + b*x + c into this form.) Output: a NetworkSchedule that says

- the multiplicative depth: every dense layer is one plaintext product and every activation
  one ciphertext product, each followed by one rescale (one prime dropped);
- the smallest parameters that hold it at 128-bit security: N = 8192, 16384 or 32768, a last
  prime q0 that holds the outputs at the data scale (and, within 50 bits, the single layout's
  slot sums at the scale that keeps their precision), `depth` data primes of the data scale and
  a special prime (60 bits where the ring has room, else a few bits above every data prime),
  within the HE standard's coefficient-modulus limit for N;
- the padded width of every layer (single layout: a power of two that divides the slots),
  the baby-step/giant-step split of every matrix-vector product and the rotation steps;
- the operation counts of both layouts, by level (benchmarks turn them into a time floor).

What does not fit is refused with the layer and the reason (CompileError).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from heserve.engine.errors import EngineError
from heserve.engine.params import MAX_COEFF_BITS_128, CKKSParams

RING_DEGREES = (8192, 16384, 32768)
SPECIAL_PRIME_BITS = 60
# Key switching (rotations, relinearization) adds noise ~ sqrt(N * depth) * q_max * sigma / P.
# Measured on digits-cryptonets at N=8192: with the data scale 2^27, a special prime 3 bits above
# the largest data prime leaves logits 1.7e-3 from plaintext, 11 bits above 3-4e-4 (and a smaller
# scale with a larger special prime no better); 60 bits where the ring has room.
SPECIAL_PRIME_MARGIN_BITS = 11
# The data scale: larger keeps more precision; smaller lets a deeper network fit a ring. At 2^27
# a CryptoNets-class network (two squares) keeps its logits within ~4e-4 of plaintext (2^40:
# ~1e-7) and fits N=8192, where it runs 2.3x faster than at N=16384, with a third of the keys.
MAX_SCALE_BITS, MIN_SCALE_BITS = 40, 26
# ... but every activation (a square) doubles the relative error its input carries: with noise
# ~2^10 at the scale 2^s (encryption, key switching, rescaling), a activations leave ~2^(a+10-s)
# of the outputs, so a network of a activations gets a scale of at least 2^(20 + a).
SCALE_BITS_BASE = 20
# The batch layout multiplies coefficients modulo each prime in numpy (engine.modmath), which is
# exact for primes below 2^50; q0 is the largest prime a ciphertext carries.
MAX_LAST_PRIME_BITS = 50
# Bits q0 keeps above |output| * scale: the sign, rounding and noise.
OUTPUT_HEADROOM_BITS = 3


class CompileError(EngineError):
    """A network that cannot be evaluated at 128-bit security; the message names the layer."""


@dataclass(frozen=True)
class DenseSchedule:
    """One dense layer in the single layout: a (d_out x d_in) padded matrix times a periodic vector."""

    index: int  # position in the layer list
    source: str
    n_in: int
    n_out: int
    d_in: int  # the input vector's period (power of two)
    d_out: int  # the output vector's period
    baby: int  # baby steps 0..baby-1 rotate the input; giant steps rotate partial sums by `baby`
    level: int  # level (primes dropped so far) at which the products are made
    # The output layer's result is read as slot sums (engine.deep): the client's sum over the slots
    # k (mod d_out) adds up the column blocks too, so the server does not rotate them together.
    summed_by_client: bool = False

    @property
    def diagonals(self) -> int:
        return min(self.d_in, self.d_out)

    @property
    def giant(self) -> int:
        return self.diagonals // self.baby

    def baby_steps(self) -> list[int]:
        # Baby copy k is made from copy k - lowbit(k): only power-of-two steps need keys.
        return sorted({k & -k for k in range(1, self.baby)})

    def giant_steps(self) -> list[int]:
        return [self.baby] if self.giant > 1 else []

    def sum_steps(self) -> list[int]:
        """A wide-to-narrow product sums the partial products of the d_in/d_out column blocks."""
        if self.summed_by_client:
            return []
        steps, step = [], self.d_out
        while step < self.d_in:
            steps.append(step)
            step *= 2
        return steps

    def rotation_steps(self) -> set[int]:
        return set(self.baby_steps()) | set(self.giant_steps()) | set(self.sum_steps())

    def rotation_uses(self) -> Counter[int]:
        """How many times one sample rotates by each step in this layer (engine.deep._dense_single)."""
        uses = Counter(k & -k for k in range(1, self.baby))
        uses.update({self.baby: self.giant - 1} if self.giant > 1 else {})
        uses.update(self.sum_steps())
        return uses

    def rotations(self) -> int:
        return (self.baby - 1) + (self.giant - 1) + len(self.sum_steps())


@dataclass(frozen=True)
class NetworkSchedule:
    params: CKKSParams
    scale_bits: int
    depth: int
    input_period: int
    periodic_steps: tuple[int, ...]
    dense: tuple[DenseSchedule, ...]
    activations: tuple[int, ...]  # levels at which the activations' products are made
    widths: tuple[int, ...]  # n_in, then every dense layer's n_out
    extra: dict = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return self.params.slot_count

    def rotation_uses(self) -> Counter[int]:
        """How many times one single-layout sample rotates by each step."""
        uses = Counter(self.periodic_steps)
        for layer in self.dense:
            uses.update(layer.rotation_uses())
        return uses

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        steps = set(self.periodic_steps)
        for layer in self.dense:
            steps |= layer.rotation_steps()
        return tuple(sorted(steps))

    @property
    def degree(self) -> int:
        """Total degree of the network as a polynomial of its input."""
        return 2 ** len(self.activations)

    def single_ops(self) -> list[dict]:
        """SEAL operations of one single-layout row, by level (level = primes dropped)."""
        ops: list[dict] = [
            {"op": "load_seeded_ciphertext", "count": 1, "level": 0},
            {"op": "rerandomize", "count": 1, "level": 0},  # before any key switch (engine.levels)
            {"op": "rotate", "count": len(self.periodic_steps), "level": 0},
            {"op": "add", "count": len(self.periodic_steps), "level": 0},
        ]
        act = iter(self.activations)
        for layer in self.dense:
            products = layer.diagonals
            ops += [
                {"op": "rotate", "count": (layer.baby - 1) + (layer.giant - 1), "level": layer.level},
                {"op": "multiply_plain", "count": products, "level": layer.level},
                {"op": "add", "count": products - 1, "level": layer.level},
                {"op": "rescale", "count": 1, "level": layer.level},
                {"op": "rotate", "count": len(layer.sum_steps()), "level": layer.level + 1},
                {"op": "add", "count": len(layer.sum_steps()) + 1, "level": layer.level + 1},
            ]
            level = next(act, None)
            if level is not None:
                ops += [
                    {"op": "add", "count": 1, "level": level},
                    {"op": "multiply_relinearize", "count": 1, "level": level},
                    {"op": "rescale", "count": 1, "level": level},
                ]
        ops.append({"op": "mask", "count": 1, "level": self.depth})  # the slot sums' mask
        ops.append({"op": "rerandomize", "count": 1, "level": self.depth})  # every result leaves re-randomized
        return [op for op in ops if op["count"]]

    def single_row_seconds(self) -> float:
        """A deliberately rough estimate of one single-layout row's server time on one core.

        Key switches (rotations, relinearizations) dominate; SEAL's cost grows with N and with
        L*(L+1) for L data primes at the operation's level. Fitted on a 2-core machine at N=8192 and
        16384 (0.17-0.21 ms per unit), used only to size requests."""
        n_units = self.params.poly_modulus_degree / 8192
        data_primes = len(self.params.coeff_mod_bit_sizes) - 1
        ms = 0.0
        for op in self.single_ops():
            primes = data_primes - op["level"]
            if op["op"] in ("rotate", "multiply_relinearize"):
                ms += op["count"] * 0.2 * n_units * primes * (primes + 1)
            elif op["op"] in ("multiply_plain", "rescale", "load_seeded_ciphertext"):
                ms += op["count"] * 0.1 * n_units * primes
        return ms / 1e3

    def batch_fused(self, number: int) -> bool:
        """Whether the batch layout evaluates the activation after dense layer `number` in numpy,
        unrelinearized (three polynomials), for the next layer's matrix product: that moves the key
        switches from this layer's units to the next layer's, so it pays where the next is narrower
        (digits-cryptonets: 256 units, then 32); elsewhere SEAL multiplies, relinearizes, rescales."""
        return number < len(self.activations) and self.widths[number + 1] > self.widths[number + 2]

    def batch_takes_fused(self, number: int) -> bool:
        """Whether dense layer `number` takes a fused activation (three polynomials, unrescaled)."""
        return number > 0 and self.batch_fused(number - 1)

    def batch_deferred(self, number: int) -> bool:
        """Whether dense layer `number`'s outputs skip their rescale: a fused activation on fresh
        (two-polynomial) products squares them where they are, in numpy, and the next layer drops
        this layer's prime with its own. digits-cryptonets' 256 first units then never reach SEAL:
        their 256 rescales (and the copies in and out of SEAL around them) cost more than one more
        prime in the next layer's matrix product and one more rescale of its 32 outputs."""
        return self.batch_fused(number) and not self.batch_takes_fused(number)

    def batch_level(self, number: int) -> int:
        """The level of dense layer `number`'s matrix product in the batch layout. Every layer's
        outputs land at level 2 * number + 1, a deferred layer's excepted (they stay at its level);
        a layer after a fused activation takes its input unrescaled (~2^(2s)), one level earlier
        (two if that layer was deferred too), and drops two (three) primes."""
        if number == 0:
            return 0
        if self.batch_deferred(number - 1):
            return self.batch_level(number - 1)
        return 2 * number - (1 if self.batch_takes_fused(number) else 0)

    def batch_drops(self, number: int) -> int:
        """Primes dense layer `number`'s outputs drop (rescales) before the next stage."""
        if self.batch_deferred(number):
            return 0
        return 2 * number + 1 - self.batch_level(number)

    def batch_ops(self) -> list[dict]:
        """Operations of one batch chunk (one ciphertext per feature and per unit): modular matrix
        products (and fused activations) in numpy, rescales, products and relinearizations in SEAL."""
        ops: list[dict] = []
        for number, layer in enumerate(self.dense):
            level = self.batch_level(number)
            shape = [layer.n_out, layer.n_in]
            drops = self.batch_drops(number)
            if self.batch_takes_fused(number):
                ops += [{"op": "modular_matmul", "shape": shape, "components": 3, "level": level}]
                ops += [{"op": "rescale_3", "count": layer.n_out, "level": level + i} for i in range(drops - 1)]
                ops += [
                    {"op": "relinearize", "count": layer.n_out, "level": level + drops - 1},
                    {"op": "rescale", "count": layer.n_out, "level": level + drops - 1},
                ]
            else:
                ops.append({"op": "modular_matmul", "shape": shape, "components": 2, "level": level})
                if drops:
                    ops.append({"op": "rescale", "count": layer.n_out, "level": level})
            out_level = level + drops
            if number < len(self.activations):
                if self.batch_fused(number):
                    ops.append({"op": "coefficientwise_product", "count": layer.n_out, "level": out_level})
                else:
                    ops += [
                        {"op": "multiply_relinearize", "count": layer.n_out, "level": out_level},
                        {"op": "rescale", "count": layer.n_out, "level": out_level},
                    ]
        ops.append({"op": "rerandomize", "count": self.dense[-1].n_out, "level": self.depth})
        return ops


def next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _bits(value: float) -> int:
    return max(0, math.ceil(math.log2(max(value, 1.0))))


def choose_parameters(depth: int, output_bound: float, widest: int, widest_name: str = "a layer",
                      output_layer_width: int = 0) -> tuple[CKKSParams, int]:
    """The smallest ring (then the largest data scale) holding `depth` levels at 128-bit security.

    `output_layer_width` (the output layer's padded max(d_in, d_out)) asks q0 for room for the single
    layout's slot sums: the result holds S/width copies of each output's share, and the plaintext
    scale that keeps their precision (engine.deep) multiplies the result's scale by up to that many,
    which SEAL bounds by q0. Where 50 bits or the ring do not allow all of it, q0 takes what they do."""
    out_bits = _bits(output_bound)
    min_scale = max(MIN_SCALE_BITS, SCALE_BITS_BASE + (depth - 1) // 2)
    reasons = []
    for n in RING_DEGREES:
        if widest > n // 2:
            reasons.append(f"N={n} has {n // 2} slots, {widest_name} needs {widest}")
            continue
        copies_bits = _bits(n // 2 / output_layer_width) if output_layer_width else 0
        for scale in range(MAX_SCALE_BITS, min_scale - 1, -1):
            base = scale + out_bits + OUTPUT_HEADROOM_BITS
            if base > MAX_LAST_PRIME_BITS:
                continue
            # engine.deep's headroom is bits(q0) - scale - 2; the base leaves out_bits + 1 of it.
            roomy = min(MAX_LAST_PRIME_BITS, base + max(0, copies_bits - out_bits - 1))
            for last in range(roomy, base - 1, -1):  # the roomiest q0 the special prime's margin allows
                special = min(SPECIAL_PRIME_BITS, MAX_COEFF_BITS_128[n] - last - depth * scale)
                if special >= max(last, scale) + SPECIAL_PRIME_MARGIN_BITS:
                    return CKKSParams(n, (last, *([scale] * depth), special)), scale
        last = min_scale + out_bits + OUTPUT_HEADROOM_BITS
        special = last + SPECIAL_PRIME_MARGIN_BITS
        levels = max(0, (MAX_COEFF_BITS_128[n] - special - last) // min_scale)
        reasons.append(f"N={n} allows {levels} levels at 2^{min_scale}")
    if out_bits + min_scale + OUTPUT_HEADROOM_BITS > MAX_LAST_PRIME_BITS:
        raise CompileError(f"outputs up to {output_bound:g} do not fit a {MAX_LAST_PRIME_BITS}-bit last prime")
    raise CompileError(f"depth {depth} does not fit at 128-bit security ({'; '.join(reasons)})")


def choose_baby(diagonals: int) -> int:
    """Baby steps b ~ sqrt(D): b - 1 + D/b - 1 rotations; b the larger of the two square-root powers
    (baby rotations act on a fresh product's input, giant ones on sums of products: same cost)."""
    baby = 1
    while baby * baby < diagonals:
        baby *= 2
    return baby


def compile_network(layers: list[dict], arrays: dict[str, np.ndarray], output_bound: float) -> NetworkSchedule:
    """Check the layer structure and choose parameters, layout and operations."""
    if not layers or layers[0].get("type") != "dense" or layers[-1].get("type") != "dense":
        raise CompileError("a network must start and end with a dense layer")
    widths: list[int] = []
    for index, layer in enumerate(layers):
        where = f"layer {index} ({layer.get('source', layer.get('type'))})"
        expected = "dense" if index % 2 == 0 else "act"
        if layer.get("type") != expected:
            raise CompileError(f"{where}: expected a {expected} layer (dense and activation alternate)")
        if expected == "dense":
            weights = np.asarray(arrays[layer["weights"]])
            bias = np.asarray(arrays[layer["bias"]])
            if weights.ndim != 2 or bias.shape != (weights.shape[0],):
                raise CompileError(f"{where}: weights must be (outputs, inputs) and bias (outputs,)")
            if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
                raise CompileError(f"{where}: weights must be finite")
            if widths and weights.shape[1] != widths[-1]:
                raise CompileError(f"{where}: takes {weights.shape[1]} inputs, the previous layer gives {widths[-1]}")
            if not widths:
                widths.append(int(weights.shape[1]))
            widths.append(int(weights.shape[0]))
        elif not math.isfinite(float(layer.get("beta", 0.0))):
            raise CompileError(f"{where}: beta must be finite")
    n_dense = (len(layers) + 1) // 2
    depth = n_dense + (n_dense - 1)
    padded = [next_power_of_two(w) for w in widths]
    wide = int(np.argmax(padded))
    wide_layer = 2 * (wide - 1)
    wide_name = "the input" if wide == 0 else f"layer {wide_layer} ({layers[wide_layer].get('source', 'dense')})"
    params, scale = choose_parameters(depth, output_bound, max(padded), wide_name,
                                      output_layer_width=max(padded[-2], padded[-1]))
    slots = params.slot_count
    dense, activations = [], []
    level = 0
    for i in range(n_dense):
        d_in, d_out = padded[i], padded[i + 1]
        dense.append(
            DenseSchedule(2 * i, str(layers[2 * i].get("source", "")), widths[i], widths[i + 1], d_in, d_out,
                          choose_baby(min(d_in, d_out)), level, summed_by_client=i == n_dense - 1)
        )
        level += 1
        if i < n_dense - 1:
            activations.append(level)
            level += 1
    periodic, step = [], padded[0]
    while step < slots:
        periodic.append(step)
        step *= 2
    return NetworkSchedule(params, scale, depth, padded[0], tuple(periodic), tuple(dense), tuple(activations),
                           tuple(widths))
