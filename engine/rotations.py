"""Rotations composed from the Galois keys a client registered.

A network plan publishes the rotation steps its single layout uses. A client may register Galois
keys for only some of them: one seeded key-switching key is ~0.7 MB at N=8192 with three data
primes, so all twelve steps of a 4,096-slot network are a 9.3 MB upload (about twice that stored
and held by a worker, where SEAL keeps keys expanded), four of them 3.7 MB.
The server composes every other step from the registered ones (a rotation by 4 is four rotations by
1 when only 1, 8, 64 and 512 are registered): fewer bytes, more key switches per request.

Each step is composed of at most `MAX_HOPS` registered rotations, so no key set makes a request
cost more than `MAX_HOPS` times the rotations of the plan with every key.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Iterable, Mapping

import tenseal.sealapi as sealapi

from heserve.engine.errors import EngineError
from heserve.engine.params import galois_element

MAX_HOPS = 4


class RotationError(EngineError):
    """The registered steps cannot compose a step the plan uses within MAX_HOPS rotations."""

    code = "key_mismatch"


def routes(
    needed: Iterable[int], available: Iterable[int], slots: int, max_hops: int = MAX_HOPS
) -> dict[int, tuple[int, ...]]:
    """For every needed step (mod slots), a shortest sequence of available steps that adds up to it."""
    return dict(_routes(_normalized(needed, slots), _normalized(available, slots), slots, max_hops))


@functools.lru_cache(maxsize=256)
def _routes(
    needed: tuple[int, ...], available: tuple[int, ...], slots: int, max_hops: int
) -> tuple[tuple[int, tuple[int, ...]], ...]:
    # Breadth first from 0: every state is a rotation amount, every edge one registered rotation.
    # Within MAX_HOPS hops of at most a dozen generators there are a few hundred states.
    paths: dict[int, tuple[int, ...]] = {0: ()}
    frontier = [0]
    for _ in range(max_hops):
        following = []
        for state in frontier:
            for step in sorted(available, reverse=True):
                nxt = (state + step) % slots
                if nxt not in paths:
                    paths[nxt] = paths[state] + (step,)
                    following.append(nxt)
        frontier = following
    unreachable = [s for s in needed if s not in paths]
    if unreachable:
        raise RotationError(
            f"rotation steps {unreachable} cannot be composed from the registered steps {list(available)} "
            f"in at most {max_hops} rotations each"
        )
    return tuple((s, paths[s]) for s in needed)


def _normalized(steps: Iterable[int], slots: int) -> tuple[int, ...]:
    return tuple(sorted({int(s) % slots for s in steps} - {0}))


def cost(needed: Iterable[int], available: Iterable[int], slots: int, max_hops: int = MAX_HOPS) -> int:
    """Key switches one use of every needed step takes with these keys."""
    return sum(len(path) for path in routes(needed, available, slots, max_hops).values())


FEWEST = "fewest"


def compact_steps(
    needed: Collection[int],
    slots: int,
    count: int | str,
    uses: Mapping[int, int] | None = None,
    max_hops: int = MAX_HOPS,
) -> tuple[int, ...]:
    """The `count` needed steps whose keys compose all of them in the fewest rotations per row;
    count "fewest": the smallest count that can.

    `uses`: rotations per row by each step (a spec's rotation_uses; 1 each where absent). With the
    twelve power-of-two steps of a 4,096-slot network, each used once, and count=4 (also the fewest)
    this is 1, 8, 64, 512: every step costs at most four rotations, 28 in all instead of 12.
    """
    check_count(count)
    if count == FEWEST:
        for fewest in range(1, len(_normalized(needed, slots))):
            try:
                return compact_steps(needed, slots, fewest, uses, max_hops)
            except RotationError:
                continue
        return _normalized(needed, slots)
    steps = _normalized(needed, slots)
    used = {int(step) % slots: int(n) for step, n in (uses or {}).items()}
    weight = {s: used.get(s, 1) for s in steps}
    if count >= len(steps):
        return steps
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None
    for subset in itertools.combinations(steps, count):
        try:
            paths = routes(steps, subset, slots, max_hops)
        except RotationError:
            continue
        score = (sum(weight[s] * len(p) for s, p in paths.items()), max(len(p) for p in paths.values()))
        if best is None or score < best[0]:
            best = (score, subset)
    if best is None:
        raise RotationError(
            f"no {count} of the steps {list(steps)} compose all of them in at most {max_hops} rotations each"
        )
    return best[1]


def check_count(count: object) -> None:
    """A count of rotation keys is a whole number of at least 1, or FEWEST."""
    if count == FEWEST:
        return
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RotationError(f"a count of rotation keys is a positive integer or {FEWEST!r}, got {count!r}")


def registered_steps(steps: Iterable[int], galois_elements: Collection[int], poly_modulus_degree: int) -> list[int]:
    """The steps among `steps` whose Galois element is in `galois_elements`."""
    return [s for s in steps if galois_element(s, poly_modulus_degree) in galois_elements]


class Rotator:
    """Rotates ciphertexts by any step a plan uses, composing it from the client's registered keys."""

    def __init__(
        self,
        evaluator: sealapi.Evaluator,
        galois: sealapi.GaloisKeys | None,
        needed: Iterable[int],
        slots: int,
        max_hops: int = MAX_HOPS,
        log: list[int] | None = None,
    ):
        needed = tuple(needed)
        n = 2 * slots
        candidates = _normalized(needed, slots) if galois is not None else ()
        available = [s for s in candidates if galois.has_key(galois_element(s, n))]
        self.evaluator, self.galois, self.slots = evaluator, galois, slots
        self.paths = routes(needed, available, slots, max_hops)
        self.log = log  # where set, every step rotated by is appended (the plan contract counts them)

    def rotated(self, ct: sealapi.Ciphertext, step: int) -> sealapi.Ciphertext:
        """A new ciphertext: ct rotated left by `step` slots (ct itself is not changed)."""
        if self.log is not None:
            self.log.append(step % self.slots)
        if step % self.slots == 0:
            return sealapi.Ciphertext(ct)
        out = ct
        for hop in self.paths[step % self.slots]:
            rotated = sealapi.Ciphertext()
            self.evaluator.rotate_vector(out, hop, self.galois, rotated)
            out = rotated
        return out
