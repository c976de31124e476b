"""The network compiler: parameters chosen for the depth, refusals that name the reason, and the
plan contract on generated networks of 1-4 activations (dense and conv, up to 784 inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from heserve.contract import check_plan
from heserve.engine.compiler import CompileError, choose_parameters, compile_network
from heserve.engine.deep import DeepNetworkPlan
from heserve.engine.linear import SealRuntime
from heserve.engine.params import MAX_COEFF_BITS_128


def generated(widths: list[int], seed: int = 0, beta: float = 0.5) -> tuple[list[dict], dict]:
    """A network dense (act dense)* with these widths and weights that keep activations near 1."""
    rng = np.random.default_rng(seed)
    layers, arrays = [], {}
    for i in range(len(widths) - 1):
        arrays[f"W{i}"] = rng.normal(0, 1 / np.sqrt(widths[i]), (widths[i + 1], widths[i]))
        arrays[f"b{i}"] = rng.normal(0, 0.1, widths[i + 1])
        if i:
            layers.append({"type": "act", "beta": beta, "source": f"act {i}"})
        layers.append({"type": "dense", "weights": f"W{i}", "bias": f"b{i}", "source": f"dense {i}"})
    return layers, arrays


def conv_network(seed: int = 1) -> tuple[list[dict], dict]:
    """conv 1->4 3x3 (padding 1) on 8x8 -> square -> avg pool 2 -> dense 64->16 -> square -> dense 16->10,
    folded by the exporter as a client would ship it."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from heserve.models.export import normalize_layers, torch_layers
    from heserve.models.nn import Square

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Square(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(64, 16), Square(), nn.Linear(16, 10)).double()
    layers = normalize_layers(torch_layers(model, (1, 8, 8)))
    spec, arrays = [], {}
    for i, layer in enumerate(layers):
        if layer["type"] == "dense":
            arrays[f"W{i}"], arrays[f"b{i}"] = layer["W"] * 0.5, layer["b"] * 0.5
            spec.append({"type": "dense", "weights": f"W{i}", "bias": f"b{i}", "source": layer["source"]})
        else:
            spec.append({"type": "act", "beta": layer["beta"], "source": layer["source"]})
    return spec, arrays


def output_bound(layers: list[dict], arrays: dict, x: np.ndarray) -> float:
    """What the exporter records: four times the largest output on sample rows."""
    h = x
    for layer in layers:
        if layer["type"] == "dense":
            h = h @ arrays[layer["weights"]].T + arrays[layer["bias"]]
        else:
            h = h * (h + layer["beta"])
    return float(4 * np.max(np.abs(h)))


def runtime_cache():
    runtimes: dict = {}

    def runtime_for(params):
        if params not in runtimes:
            runtimes[params] = SealRuntime(params)
        return runtimes[params]

    return runtime_for


# --- parameters and refusals --------------------------------------------------------------------
@pytest.mark.parametrize(("depth", "ring"), [(1, 8192), (3, 8192), (5, 8192), (7, 16384), (9, 16384), (15, 32768)])
def test_the_smallest_ring_that_holds_the_depth(depth, ring):
    params, scale = choose_parameters(depth, output_bound=100.0, widest=64)
    assert params.poly_modulus_degree == ring
    assert params.total_bits <= MAX_COEFF_BITS_128[ring]
    assert len(params.coeff_mod_bit_sizes) == depth + 2  # q0, one prime per level, the special prime
    assert 26 <= scale <= 40
    *data, special = params.coeff_mod_bit_sizes
    assert special >= max(data) + 11  # key-switching noise stays far below the scale
    params.seal_context()  # SEAL agrees: 128-bit secure and the primes exist


def test_a_depth_no_ring_holds_is_refused_with_the_levels_each_allows():
    with pytest.raises(CompileError, match=r"depth 40 does not fit .*N=32768 allows \d+ levels"):
        choose_parameters(40, output_bound=100.0, widest=64)


def test_a_layer_wider_than_the_slots_moves_to_a_larger_ring():
    params, _ = choose_parameters(3, output_bound=10.0, widest=8192)
    assert params.poly_modulus_degree == 16384
    layers, arrays = generated([8, 20000, 2])
    with pytest.raises(CompileError, match=r"N=32768 has 16384 slots, layer 0 \(dense 0\) needs 32768"):
        compile_network(layers, arrays, 10.0)


def test_refusals_name_the_layer():
    layers, arrays = generated([8, 4, 2])
    arrays["W1"] = np.ones((2, 5))
    with pytest.raises(CompileError, match=r"layer 2 .*takes 5 inputs, the previous layer gives 4"):
        compile_network(layers, arrays, 10.0)
    with pytest.raises(CompileError, match="start and end with a dense layer"):
        compile_network(layers[:2], arrays, 10.0)
    with pytest.raises(CompileError, match="outputs up to 1e\\+20 do not fit"):
        compile_network(*generated([8, 4, 2]), 1e20)


def test_the_schedule_counts_levels_rotations_and_operations():
    schedule = compile_network(*generated([30, 16, 16, 2]), 50.0)
    assert schedule.depth == 5 and schedule.degree == 4
    assert [d.level for d in schedule.dense] == [0, 2, 4] and schedule.activations == (1, 3)
    assert all(step & (step - 1) == 0 for step in schedule.rotation_steps)  # powers of two only
    rotations = sum(op["count"] for op in schedule.single_ops() if op["op"] == "rotate")
    assert rotations == len(schedule.periodic_steps) + sum(d.rotations() for d in schedule.dense)


@pytest.mark.parametrize(
    "widths",
    [[64, 256, 32, 10], [30, 16, 16, 2], [64, 32, 32, 32, 10], [16, 8, 8, 8, 8, 3], [8, 64, 32, 16, 4], [8, 4, 16, 2]],
)
def test_the_batch_schedule_spends_exactly_the_levels_of_the_single_layout(widths):
    """Every activation's input lands where the single layout's does (level 2n+1), a deferred layer's
    excepted, whose outputs stay at its own level and whose next layer drops its prime too."""
    schedule = compile_network(*generated(widths), 50.0)
    level = 0
    for number in range(len(schedule.dense)):
        assert schedule.batch_level(number) == level, number
        drops = schedule.batch_drops(number)
        if schedule.batch_deferred(number):
            assert drops == 0 and schedule.batch_drops(number + 1) == 3
        else:
            assert level + drops == 2 * number + 1
        level += drops
        if number < len(schedule.activations) and not schedule.batch_fused(number):
            level += 1  # SEAL's product, relinearization and rescale
    assert level == schedule.depth
    ops = schedule.batch_ops()
    seal_rescales = sum(op["count"] for op in ops if op["op"].startswith("rescale"))
    seal_activations = [n < len(schedule.activations) and not schedule.batch_fused(n) for n in range(len(widths) - 1)]
    assert seal_rescales == sum(
        (schedule.batch_drops(n) + seal_activations[n]) * d.n_out for n, d in enumerate(schedule.dense)
    )


def test_cryptonets_wide_first_layer_never_reaches_seal_in_the_batch_layout():
    """conv (256 units) -> square -> 32: the 256 products are squared in numpy where they are, and the
    32-unit layer drops three primes (rescale, rescale, relinearize, rescale): no SEAL call per wide unit."""
    schedule = compile_network(*generated([64, 256, 32, 10]), 50.0)
    assert schedule.batch_deferred(0) and not schedule.batch_deferred(1)
    ops = [(op["op"], op.get("count"), op["level"]) for op in schedule.batch_ops() if op["op"] != "modular_matmul"]
    assert ops[:5] == [
        ("coefficientwise_product", 256, 0),
        ("rescale_3", 32, 0),
        ("rescale_3", 32, 1),
        ("relinearize", 32, 2),
        ("rescale", 32, 2),
    ]
    assert all(count != 256 for op, count, _ in ops if op != "coefficientwise_product")


# --- the plan contract on generated networks (real SEAL) ------------------------------------------
GENERATED = {
    "1 activation, 784 inputs": [784, 16, 10],
    "2 activations": [30, 16, 16, 2],
    "3 activations": [64, 32, 32, 32, 10],
    "4 activations": [16, 8, 8, 8, 8, 3],
    "2 activations, one output": [16, 8, 8, 1],  # result_period 1: only the constant coefficient
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_networks_keep_the_plan_contract(name):
    widths = GENERATED[name]
    layers, arrays = generated(widths, seed=len(widths))
    x = np.random.default_rng(7).normal(0, 1, (2, widths[0]))
    plan = DeepNetworkPlan(layers, arrays, output_bound(layers, arrays, x), runtime_cache())
    assert plan.schedule.depth == 2 * len(widths) - 3
    check_plan(plan, x)


def test_a_folded_conv_network_keeps_the_plan_contract():
    layers, arrays = conv_network()
    x = np.random.default_rng(3).uniform(0, 1, (2, 64))
    plan = DeepNetworkPlan(layers, arrays, output_bound(layers, arrays, x), runtime_cache())
    check_plan(plan, x)


# --- generated torch networks, exported, served by gunicorn, compared with torch ---------------------
def test_generated_torch_networks_served_by_gunicorn_agree_with_torch(tmp_path):
    """What a data scientist does: train-shaped torch networks (dense and conv, 1-3 activations, up to
    784 inputs), exported, compiled by a real server at start, queried through the SDK on real SEAL."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from heserve.client import Client
    from heserve.models.export import torch_to_artifact
    from heserve.models.nn import PolyActivation, Square
    from heserve.server.launch import start_server

    torch.manual_seed(4)
    nets = {
        "gen-784": (nn.Sequential(nn.Linear(784, 16), Square(), nn.Linear(16, 10)), (784,)),
        "gen-conv2": (
            nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Square(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, 8), PolyActivation(0.2, 0.5, 0.1), nn.Linear(8, 3)),
            (1, 8, 8),
        ),
        "gen-dense3": (
            nn.Sequential(nn.Linear(12, 8), PolyActivation(0.3, 0.4, 0.0), nn.Linear(8, 8), Square(),
                          nn.Linear(8, 8), PolyActivation(0.2, -0.3, 0.1), nn.Linear(8, 4)),
            (12,),
        ),
    }
    rng = np.random.default_rng(5)
    inputs, expected = {}, {}
    models_dir = tmp_path / "models"
    for name, (net, shape) in nets.items():
        net = net.double().eval()
        x = rng.uniform(0, 1, (30, int(np.prod(shape))))
        torch_to_artifact(net, shape, models_dir / name, name, preprocess="none", x_sample=x)
        with torch.no_grad():
            expected[name] = net(torch.tensor(x.reshape(-1, *shape))).numpy()
        inputs[name] = x
    server = start_server(tmp_path / "server", workers=1, models_dir=models_dir)
    try:
        with Client(server.url, timeout=120) as client:
            depths = {}
            for name, x in inputs.items():
                depths[name] = client.model_metadata(name)["parameters"]["encryption"]["multiplicative_depth"]
                model = client.model(name)
                for layout, rows in (("single", 2), ("batch", 30)):
                    got = model.raw_scores(x[:rows], layout=layout)
                    scale = max(1.0, float(np.max(np.abs(expected[name]))))
                    assert np.max(np.abs(got - expected[name][:rows])) < 1e-3 * scale, (name, layout)
                model.delete_key()
    finally:
        server.stop()
    assert depths == {"gen-784": 3, "gen-conv2": 5, "gen-dense3": 7}
