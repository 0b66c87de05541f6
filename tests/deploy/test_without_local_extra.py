"""A production install has no `local` extra (no jsonschema): `import stream`, every module
outside `stream.local`, and `klaviyo-stream run --help` still work.

The environment is a real virtual environment without site packages. Instead of downloading
the dependencies again, it gets exactly the distributions pyproject's `dependencies` (no
extras) resolve to, transitively, by their markers: each one's installed files, linked from
this interpreter's site-packages (the same files pip would install there). The project is
linked in as its `stream` package. Anything imported from outside that closure fails to
import, as it would in the container.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = "jsonschema"  # what the `local` extra adds


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `requirements` need, transitively, markers evaluated."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        req, extra = todo.pop()
        environment = {**default_environment(), "extra": extra}
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        name = canonicalize_name(req.name)
        dist = metadata.distribution(req.name)
        wanted = sorted(req.extras)
        if name in found and not wanted:
            continue
        found[name] = dist
        for text in dist.requires or []:
            for wanted_extra in ["", *wanted]:
                todo.append((Requirement(text), wanted_extra))
    return found


def _top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names a distribution installed directly in site-packages (packages, modules,
    extension modules, its .dist-info)."""
    if dist.files is None:
        raise AssertionError(f"{dist.metadata['Name']} has no RECORD: cannot tell its files")
    names = set()
    for file in dist.files:
        first = file.parts[0]
        if first not in ("..", "__pycache__"):
            names.add(first)
    return names


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv holding the project and its non-extra dependencies, nothing else."""
    venv = tmp_path_factory.mktemp("no-local-extra") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    site = Path(purelib)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dists = _closure(project["dependencies"])
    assert LOCAL_ONLY not in dists, f"{LOCAL_ONLY} is a dependency without the local extra"
    for dist in dists.values():
        where = Path(str(dist.locate_file(""))).resolve()
        for name in _top_level_entries(dist):
            target = where / name
            if target.exists() and not (site / name).exists():
                (site / name).symlink_to(target)
    (site / "stream").symlink_to(ROOT / "stream")
    return python


def _run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=120, env=env, cwd="/"
    )


def test_the_venv_lacks_the_local_extra(bare_python: Path) -> None:
    done = _run(bare_python, "-c", f"import {LOCAL_ONLY}")
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, done


IMPORT_ALL = """
import importlib, pkgutil, sys
import stream
names = [m.name for m in pkgutil.walk_packages(stream.__path__, "stream.")
         if not m.name.startswith("stream.local") and not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
assert "{local}" not in sys.modules, "imported {local}"
print(len(names), "modules")
"""


def test_every_module_outside_local_imports(bare_python: Path) -> None:
    done = _run(bare_python, "-c", IMPORT_ALL.format(local=LOCAL_ONLY))
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[0]) > 50, done.stdout  # the walk found the package


def test_run_help_works(bare_python: Path) -> None:
    """`python -m stream` is the `klaviyo-stream` entry point (stream.cli:main)."""
    done = _run(bare_python, "-m", "stream", "run", "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: klaviyo-stream run" in done.stdout
