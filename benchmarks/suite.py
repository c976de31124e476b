"""One benchmark run: settings, the workloads in order, and the report they make.

    from heserve.benchmarks.suite import QUICK, run, write
    result = run(QUICK)              # starts (and stops) its own server
    write(result, Path("results"))   # results.json, results.md, PNG plots
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from heserve.server.launch import start_server

from . import linear, networks, report
from .inprocess import InProcess
from .system import environment, load_average

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Sweep:
    """Rows per call to measure rows/s at, in each layout, with `calls` calls per point."""

    batch: tuple[int, ...]
    single: tuple[int, ...]
    calls: int
    naive_batch_calls: int = 0  # networks: TenSEAL's column-wise batch at each size (slow)


@dataclass(frozen=True)
class Settings:
    name: str
    linear_models: tuple[str, ...]
    network_models: tuple[str, ...]
    samples: int  # linear, single sample: calls of each workload
    batch_rows: int  # linear, batch: rows per call
    plain_calls: int  # plaintext batch calls
    batch_calls: int  # linear batch calls (TenSEAL, server side, HTTP)
    net_samples: int  # networks, single sample: calls of each service workload
    naive_samples: Mapping[str, int]  # networks: TenSEAL naive single-sample calls (absent or 0: skipped)
    net_batch_rows: int
    net_batch_calls: int  # server-side batch calls
    http_batch_calls: int  # end-to-end batch calls over HTTP
    naive_batch_calls: Mapping[str, int]  # networks: TenSEAL column-wise batch calls (absent or 0: skipped)
    sweeps: Mapping[str, Sweep] = field(default_factory=dict)
    workers: int = 2

    def describe(self) -> str:
        """What this run measured, and (for a short run) what it left out compared with the full run."""
        if self == FULL:
            return "full run"
        full = FULL
        parts = [f"{self.name} run"]
        mine = self.linear_models + self.network_models
        left_out = [m for m in full.linear_models + full.network_models if m not in mine]
        if left_out:
            parts.append(f"models left out: {', '.join(left_out)}")
        if self.samples != full.samples:
            parts.append(f"{self.samples} single-sample calls per linear workload (full: {full.samples})")
        if self.batch_rows != full.batch_rows:
            parts.append(f"linear batches of {self.batch_rows:,} rows (full: {full.batch_rows:,})")
        if self.batch_calls != full.batch_calls:
            parts.append(f"{self.batch_calls} linear batch calls (full: {full.batch_calls})")
        if self.net_samples != full.net_samples:
            parts.append(f"{self.net_samples} single-sample calls per network workload (full: {full.net_samples})")
        if self.net_batch_calls != full.net_batch_calls:
            parts.append(f"{self.net_batch_calls} server-side network batch calls (full: {full.net_batch_calls})")
        naive = {m: n for m, n in self.naive_samples.items() if n and m in self.network_models}
        no_naive = [m for m in self.network_models if not naive.get(m)]
        parts.append(
            "TenSEAL naive network calls: "
            + (", ".join(f"{m} {n}" for m, n in naive.items()) or "none")
            + (f" (not measured: {', '.join(no_naive)})" if no_naive else "")
        )
        no_batch = [m for m in self.network_models if not self.naive_batch_calls.get(m)]
        if no_batch:
            parts.append(f"no TenSEAL column-wise batch for {', '.join(no_batch)}")
        sweeps = [f"{m} {list(s.batch)}" for m, s in self.sweeps.items()]
        parts.append("batch sizes swept: " + ("; ".join(sweeps) or "none"))
        return "; ".join(parts)


LINEAR = tuple(linear.SPLITS)
NETWORKS = tuple(networks.SPLITS)

# The full run: the repetitions behind the published numbers (keep them, so runs stay comparable).
FULL = Settings(
    name="full",
    linear_models=LINEAR,
    network_models=NETWORKS,
    samples=200,
    batch_rows=16384,
    plain_calls=20,
    batch_calls=5,
    net_samples=20,
    # The deeper networks run TenSEAL at N=16384 with 5-7 levels: seconds per row, so few rows.
    naive_samples={"digits-mlp": 5, "digits-cnn": 5, "mnist-size-mlp": 1, "digits-cryptonets": 2, "digits-mlp3": 2},
    net_batch_rows=4096,
    net_batch_calls=3,
    http_batch_calls=1,
    # mnist-size-mlp column-wise would be ~100,000 TenSEAL scalar products per call (minutes): left out. The
    # deeper networks' is measured only when estimated below networks.NAIVE_BATCH_LIMIT_S (the row says so).
    naive_batch_calls={"digits-mlp": 1, "digits-cnn": 1, "digits-cryptonets": 1, "digits-mlp3": 1},
    sweeps={
        "breast-cancer-logreg": Sweep((1, 16, 256, 2048, 16384), (1, 16, 64), 5),
        "digits-mlp": Sweep((1, 64, 512, 4096, 8192), (1, 4, 16), 3, naive_batch_calls=1),
    },
)

# For CI: about a minute on a busy 2-core machine.
QUICK = Settings(
    name="quick",
    linear_models=LINEAR,
    network_models=("digits-mlp",),
    samples=30,
    batch_rows=4096,
    plain_calls=10,
    batch_calls=2,
    net_samples=8,
    naive_samples={"digits-mlp": 1},
    net_batch_rows=4096,
    net_batch_calls=1,
    http_batch_calls=1,
    naive_batch_calls={"digits-mlp": 1},
    sweeps={
        "breast-cancer-logreg": Sweep((1, 256, 4096), (1, 8), 2),
        "digits-mlp": Sweep((1, 512, 4096), (1, 4), 1),
    },
)

# For the notebook: every shipped model in both layouts, encrypted against plaintext; the TenSEAL
# baseline only where it takes seconds, not minutes.
NOTEBOOK = Settings(
    name="notebook",
    linear_models=LINEAR,
    network_models=NETWORKS,
    samples=15,
    batch_rows=4096,
    plain_calls=10,
    batch_calls=2,
    net_samples=4,
    naive_samples={"digits-mlp": 1},
    net_batch_rows=4096,
    net_batch_calls=1,
    http_batch_calls=1,
    naive_batch_calls={},
    sweeps={
        "breast-cancer-logreg": Sweep((1, 256, 4096), (1, 16), 2),
        "digits-mlp": Sweep((1, 512, 4096), (1, 4), 1),
    },
)


def subset(settings: Settings, models: Iterable[str]) -> Settings:
    """`settings` restricted to `models` (any shipped model; its repetitions as `settings` has them)."""
    chosen = list(dict.fromkeys(models))
    unknown = [m for m in chosen if m not in LINEAR + NETWORKS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(LINEAR + NETWORKS)}")
    return replace(
        settings,
        linear_models=tuple(m for m in LINEAR if m in chosen),
        network_models=tuple(m for m in NETWORKS if m in chosen),
        sweeps={m: s for m, s in settings.sweeps.items() if m in chosen},
    )


def steps(settings: Settings) -> int:
    n = len(settings.linear_models) * linear.STEPS + len(settings.network_models) * networks.STEPS
    n += sum(len(s.batch) + len(s.single) for s in settings.sweeps.values())
    return n + len(settings.network_models)  # each network's op-count floor


def run(settings: Settings, url: str | None = None, command: str = "", progress: bool = True) -> dict:
    """Measure every workload of `settings`; starts its own server (two gunicorn workers) unless `url` is given."""
    header = environment(command or f"benchmarks.suite.run({settings.name.upper()})", settings.workers)
    bar = tqdm(total=steps(settings), desc="benchmarks", unit="step", disable=not progress, mininterval=0.5)

    def tick(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update(1)

    context = linear.tenseal_naive_context()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), workers=settings.workers) if url is None else None
        try:
            url = url or server.url
            engine = InProcess(Path(tmp) / "in-process-keys")
            rows = []
            for name in settings.linear_models:
                rows += linear.bench_model(
                    name,
                    url,
                    settings.samples,
                    settings.batch_rows,
                    context,
                    engine=engine,
                    plain_calls=settings.plain_calls,
                    batch_calls=settings.batch_calls,
                    tick=tick,
                )
            net_rows = []
            floors = {}
            for name in settings.network_models:
                net_rows += networks.bench_network(
                    name,
                    url,
                    settings.net_samples,
                    settings.naive_samples.get(name, 0),
                    None,  # TenSEAL's context: the one whose depth fits the network
                    engine=engine,
                    batch_rows=settings.net_batch_rows,
                    batch_calls=settings.net_batch_calls,
                    http_batch_calls=settings.http_batch_calls,
                    naive_batch_calls=settings.naive_batch_calls.get(name, 0),
                    tick=tick,
                )
                # Priced right after the model's own runs, under the same load: on a shared machine a
                # slow (or fast) spell then moves the measured time and its floor together.
                tick(f"{name}: op-count floor")
                floors[name] = networks.floors(engine.services, name)
            points = []
            for name, sweep in settings.sweeps.items():
                if name in linear.SPLITS:
                    points += linear.sweep(name, url, context, sweep.batch, sweep.single, sweep.calls, tick=tick)
                else:
                    points += networks.sweep(
                        name,
                        url,
                        engine,
                        None,
                        sweep.batch,
                        sweep.single,
                        sweep.calls,
                        naive_batch_calls=sweep.naive_batch_calls,
                        tick=tick,
                    )
        finally:
            if server is not None:
                server.stop()
    bar.close()
    header["load average at end"] = load_average()
    report.derive(rows)
    report.derive(net_rows)
    report.add_floors(net_rows, floors)
    settings_json = json.loads(json.dumps(asdict(settings)))
    settings_json["description"] = settings.describe()
    result = {
        "header": header,
        "settings": settings_json,
        "results": rows,
        "ratios": report.linear_ratios(rows),
        "networks": net_rows,
        "network_ratios": report.network_ratios(net_rows, floors),
        "agreement": report.agreement_lines(rows + net_rows),
        "op_floor": floors,
        "sweeps": points,
        "plots": list(report.PLOTS),
    }
    return result


def write(result: dict, out: Path = DEFAULT_OUT) -> list[Path]:
    """results.json, results.md and the PNG plots in `out`; returns their paths."""
    from . import plots  # matplotlib only when writing

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(report.markdown(result))
    return [out / "results.json", out / "results.md", *plots.save(result, out)]
