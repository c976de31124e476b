"""`pip install` as an application developer and an operator do it: a wheel, a fresh virtual
environment outside the repository, the SDK and the server extra, each used for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest

from heserve.server.launch import free_port, ready, terminate

ROOT = Path(__file__).resolve().parent.parent
SDK_DEPENDENCIES = {"numpy", "tenseal", "urllib3", "zstandard", "tqdm"}
FORBIDDEN_TOP_LEVEL = {"client", "server", "protocol", "models", "engine", "benchmarks", "tests"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the tracked files (setuptools writes build/ beside the sources)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, cwd=out)
    (built,) = out.glob("heserve-*.whl")
    return built


def test_the_wheel_holds_one_namespace_and_asks_only_the_sdks_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"heserve"}
    assert "heserve/models/breast-cancer-logreg/weights.npz" in names  # the artifacts travel with the server
    # Every folder with an __init__.py under the mapped folders is in the wheel (the list is explicit).
    folders = {"protocol": "protocol", "engine": "engine", "server": "server", "client": "client", "models": "models"}
    for folder, package in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            inside = init.relative_to(ROOT / folder).as_posix()
            assert f"heserve/{package}/{inside}" in names, f"{folder}/{inside} is not in the wheel"
    plain = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in plain} == SDK_DEPENDENCIES
    assert {"server", "train", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert "heserve = heserve.client.cli:main" in entry_points
    assert "heserve-server = heserve.server.__main__:main" in entry_points


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory, wheel) -> Path:
    """A virtual environment outside the repository with the wheel and its server extra, at the pins
    the project is tested with."""
    env = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-c", str(ROOT / "requirements.txt"), f"{wheel}[server]"], check=True, cwd=env.parent)
    return env


def run_python(env: Path, code: str, cwd: Path) -> str:
    result = subprocess.run(
        [str(env / "bin" / "python"), "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_installed_sdk_imports_alone_and_talks_to_the_installed_server(fresh_env, tmp_path):
    site = run_python(fresh_env, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path).strip()
    assert not FORBIDDEN_TOP_LEVEL & {p.name for p in Path(site).iterdir()}
    loaded = run_python(
        fresh_env,
        """
        import sys
        from heserve.client import Client
        print(sorted({m.split(".")[0] for m in sys.modules} & {"flask", "gunicorn", "torch", "sklearn", "werkzeug"}))
        print(sorted(m for m in sys.modules if m.startswith("heserve.server")))
        """,
        tmp_path,
    ).split("\n")
    assert loaded[0] == "[]" and loaded[1] == "[]"
    usage = subprocess.run([str(fresh_env / "bin" / "heserve"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert usage.returncode == 0 and "predict" in usage.stdout, usage.stderr
    port = free_port()
    command = [str(fresh_env / "bin" / "heserve-server"), "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(
        [*command, "--keys-dir", str(tmp_path / "keys")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if ready(url) or server.poll() is not None:
                break
            time.sleep(0.1)
        assert ready(url), "the installed server did not start"
        rows = np.random.default_rng(0).normal(0.0, 1.0, (3, 10))
        out = run_python(
            fresh_env,
            f"""
            import json
            import numpy as np
            from heserve.client import Client
            with Client("{url}") as client:
                model = client.model("diabetes-linreg")
                print(json.dumps(model.predict(np.array({rows.tolist()})).tolist()))
                model.delete_key()
            """,
            tmp_path,
        )
        from heserve.server.service.config import SHIPPED_MODELS_DIR
        from heserve.server.service.registry import load_registry

        expected = load_registry(SHIPPED_MODELS_DIR).get("diabetes-linreg").plaintext_predict(rows)
        assert np.allclose(np.array(json.loads(out)), np.ravel(expected), atol=1e-3)
    finally:
        terminate(server, 15, 30)
