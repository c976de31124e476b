"""The layer map of the README, checked on the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "heserve.protocol": ROOT / "protocol",
    "heserve.engine": ROOT / "engine",
    "heserve.server.service": ROOT / "server" / "service",
    "heserve.server.web": ROOT / "server" / "web",
    "heserve.client": ROOT / "client",
}
# What each package must never import (first-party packages by prefix, third-party by top-level name).
FORBIDDEN = {
    "heserve.protocol": {"heserve.engine", "heserve.server", "heserve.client", "heserve.models", "flask", "tenseal"},
    "heserve.engine": {"heserve.server", "heserve.client", "flask", "werkzeug", "gunicorn", "urllib3", "requests"},
    "heserve.server.service": {"heserve.server.web", "heserve.client", "flask", "werkzeug", "gunicorn"},
    "heserve.server.web": {"heserve.client"},
    "heserve.client": {"heserve.server", "heserve.models", "flask", "werkzeug", "gunicorn", "torch", "sklearn"},
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_package_imports_only_what_its_layer_may(package):
    for path in sorted(FOLDERS[package].rglob("*.py")):
        for name in imports_of(path):
            for forbidden in FORBIDDEN[package]:
                assert not (name == forbidden or name.startswith(forbidden + ".")), (
                    f"{path.relative_to(ROOT)} imports {name}: {package} may not import {forbidden}"
                )


def test_no_relative_imports_reach_across_layers():
    """Every first-party import is absolute (heserve....), so the checks above see all of them."""
    for folder in FOLDERS.values():
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text())
            relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
            assert not relative, f"{path.relative_to(ROOT)} uses a relative import"


def test_no_path_manipulation_anywhere():
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or ".git" in path.parts or path == Path(__file__).resolve():
            continue
        text = path.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, path
        assert '"PYTHONPATH"' not in text, path
