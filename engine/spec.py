"""What a client needs to encrypt for a model, as published in the model's metadata.

The server builds an EncryptionSpec when it compiles a model and publishes it under
`parameters.encryption` of the V2 model metadata; the client parses the same
structure to create matching keys and pack its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heserve.engine.errors import EngineError
from heserve.engine.params import CKKSParams, ParameterError, galois_element

SINGLE = "single"
BATCH = "batch"
LAYOUTS = (SINGLE, BATCH)
SLOTS = "slots"
COEFFICIENTS = "coefficients"
# Inputs in slots; a result's output k is the sum of its slots j = k (mod result_period), every
# slot on its own being masked (engine.neural): the client sums what the server's rotations used to.
SLOT_SUMS = "slot-sums"
ENCODINGS = (SLOTS, COEFFICIENTS, SLOT_SUMS)


class SpecError(EngineError):
    """Model metadata that does not describe a usable encryption spec."""


@dataclass(frozen=True)
class LayoutSpec:
    """One input layout a model accepts.

    single: one sample per request row. Linear models: one ciphertext with feature i in
        polynomial coefficient i (`encoding` "coefficients", protocol.coefficients), and
        `results_per_row` result ciphertexts, output k in the constant coefficient of result
        k. Networks: `packing` spreads the features over a few ciphertexts' slots
        (protocol.packing.PackedLayout), one result with output k in slot k ("slots"), or in
        the sum of its slots k, k + p, k + 2p, ... for p = `result_period` ("slot-sums").
    batch: ciphertext j holds feature j of up to `capacity` samples (sample r in slot r);
        output ciphertext k holds output k of every sample.
    """

    name: str
    capacity: int
    rotation_steps: tuple[int, ...] = ()
    # Rotations one row takes by each step, aligned with rotation_steps: what a client weighs when
    # it registers keys for only some steps (engine.rotations.compact_steps).
    rotation_uses: tuple[int, ...] = ()
    period: int = 0
    method: str = ""
    packing: dict | None = None  # networks' single layout: see protocol.packing.PackedLayout
    seeded: bool = True  # False: send full ciphertexts, uncompressed (the server reads their coefficients)
    scale_bits: int | None = None  # input scale of this layout, when it differs from the model's
    rows_charged: int = 0  # rows a tenant's quota is charged per row (single) or per chunk (batch)
    encoding: str = SLOTS  # where values sit in a plaintext: CKKS slots, or polynomial coefficients
    results_per_row: int = 1  # single layout: result ciphertexts per row
    result_period: int = 0  # "slot-sums": output k is the sum of the result's slots k mod this period
    # Single layout: rows a client should put in one request, so that one request stays well within
    # the server's time limit (0: no advice; the SDK's own default applies).
    rows_per_request: int = 0

    def input_scale_bits(self, default: int) -> int:
        return self.scale_bits if self.scale_bits is not None else default

    @property
    def ciphertexts_per_row(self) -> int:
        return int(self.packing["ciphertexts"]) if self.packing else 1

    def to_json(self, params: CKKSParams) -> dict:
        data = {
            "capacity": self.capacity,
            "rotation_steps": list(self.rotation_steps),
            "galois_elements": [galois_element(s, params.poly_modulus_degree) for s in self.rotation_steps],
            "galois_keys_needed": bool(self.rotation_steps),
        }
        if self.rotation_uses:
            data["rotation_uses"] = list(self.rotation_uses)
        if self.period:
            data["period"] = self.period
        if self.method:
            data["method"] = self.method
        if self.packing:
            data["packing"] = dict(self.packing)
        data["seeded"] = self.seeded
        if self.scale_bits is not None:
            data["scale_bits"] = self.scale_bits
        if self.rows_charged:
            data["rows_charged"] = self.rows_charged
        data["encoding"] = self.encoding
        if self.result_period:
            data["result_period"] = self.result_period
        if self.name == SINGLE:
            data["results_per_row"] = self.results_per_row
            if self.rows_per_request:
                data["rows_per_request"] = self.rows_per_request
        return data


@dataclass(frozen=True)
class EncryptionSpec:
    ckks: CKKSParams
    input_scale_bits: int
    n_features: int
    n_outputs: int
    layouts: dict[str, LayoutSpec]
    relin_keys_needed: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        """Every rotation step any layout needs (the Galois keys a client registers)."""
        steps = set()
        for layout in self.layouts.values():
            steps.update(layout.rotation_steps)
        return tuple(sorted(steps))

    @property
    def rotation_uses(self) -> dict[int, int]:
        """Rotations per row by each step, over the layouts that publish them."""
        uses: dict[int, int] = {}
        for layout in self.layouts.values():
            for step, count in zip(layout.rotation_steps, layout.rotation_uses, strict=False):
                uses[step] = uses.get(step, 0) + count
        return uses

    def to_json(self) -> dict:
        return {
            "scheme": "CKKS",
            "ckks": self.ckks.to_json(),
            "security_level": 128,
            "input_scale_bits": self.input_scale_bits,
            "n_features": self.n_features,
            "n_outputs": self.n_outputs,
            "relin_keys_needed": self.relin_keys_needed,
            "rotation_steps": list(self.rotation_steps),
            "layouts": {name: layout.to_json(self.ckks) for name, layout in self.layouts.items()},
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: object) -> EncryptionSpec:
        try:
            if not isinstance(data, dict):
                raise SpecError("encryption spec must be an object")
            ckks = CKKSParams.from_json(data["ckks"])
            layouts = {}
            for name, entry in data["layouts"].items():
                if name not in LAYOUTS or entry.get("encoding", SLOTS) not in ENCODINGS:
                    continue  # a newer server may offer layouts this SDK does not know
                layouts[name] = LayoutSpec(
                    name=name,
                    capacity=int(entry["capacity"]),
                    rotation_steps=tuple(int(s) for s in entry.get("rotation_steps", [])),
                    rotation_uses=tuple(int(u) for u in entry.get("rotation_uses", [])),
                    period=int(entry.get("period", 0)),
                    method=str(entry.get("method", "")),
                    packing=dict(entry["packing"]) if entry.get("packing") else None,
                    seeded=bool(entry.get("seeded", True)),
                    scale_bits=int(entry["scale_bits"]) if entry.get("scale_bits") is not None else None,
                    rows_charged=int(entry.get("rows_charged", 0)),
                    encoding=str(entry.get("encoding", SLOTS)),
                    results_per_row=int(entry.get("results_per_row", 1)),
                    rows_per_request=int(entry.get("rows_per_request", 0)),
                    result_period=int(entry.get("result_period", 0)),
                )
                _check_result_period(layouts[name], ckks)
                layout = layouts[name]
                if layout.rotation_uses and (
                    len(layout.rotation_uses) != len(layout.rotation_steps) or min(layout.rotation_uses) < 1
                ):
                    raise SpecError(f"layout {name!r}: rotation_uses must give a positive count per rotation step")
            if not layouts:
                raise SpecError("the model offers no layout this SDK understands")
            return cls(
                ckks=ckks,
                input_scale_bits=int(data["input_scale_bits"]),
                n_features=int(data["n_features"]),
                n_outputs=int(data["n_outputs"]),
                layouts=layouts,
                relin_keys_needed=bool(data.get("relin_keys_needed", False)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, (SpecError, ParameterError)):
                raise
            raise SpecError(f"malformed encryption spec: {exc!r}") from None


def _check_result_period(layout: LayoutSpec, ckks: CKKSParams) -> None:
    slots = ckks.poly_modulus_degree // 2
    if layout.encoding == SLOT_SUMS:
        period = layout.result_period
        if period < 1 or period & (period - 1) or slots % period:
            raise SpecError(f"result_period {period} is not a power of two dividing {slots} slots")
