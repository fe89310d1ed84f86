"""The package installs: `pip install .` and `pip install -e .` give an importable `lens` and the `logit-lens` command.

Each install goes into a throwaway virtual environment (never the one running the tests).
The dependencies are not installed again: the new environment has no packages of its own
(no pip, no setuptools) and a .pth file lets it read the running one's site-packages
(pip, setuptools, torch...), which do not hold `lens` itself. Offline: no index, no
build isolation.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT

PIP_OFFLINE = ["--no-deps", "--no-index", "--no-build-isolation", "--quiet"]


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _venv(folder: Path) -> Path:
    """A new environment whose own site-packages come first, then the running one's (for torch and the rest)."""
    _run([sys.executable, "-m", "venv", "--without-pip", folder], folder.parent)
    python = folder / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], folder).strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _installed(python: Path, cwd: Path) -> tuple[Path, Path]:
    """Where the environment imports `lens` from, and where it finds the bundled demo model."""
    where = _run([python, "-c", "import lens, lens.sources as s; print(lens.__file__); print(s.DEMO_MODEL_DIR)"], cwd)
    package, demo = where.split()
    return Path(package).parent, Path(demo)


def test_running_environment_does_not_hold_lens():
    """The tests import the checkout; an installed copy would shadow it for every helper's runs."""
    assert not (Path(sysconfig.get_paths()["purelib"]) / "lens").exists()


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_install_gives_lens_and_its_command(tmp_path, editable):
    python = _venv(tmp_path / "venv")
    if editable:
        _run([python, "-m", "pip", "install", *PIP_OFFLINE, "-e", ROOT], tmp_path)
    else:
        _run([python, "-m", "pip", "wheel", *PIP_OFFLINE, "-w", tmp_path / "wheel", ROOT], tmp_path)
        (wheel,) = (tmp_path / "wheel").glob("logit_lens_dashboard-*.whl")
        _run([python, "-m", "pip", "install", *PIP_OFFLINE, wheel], tmp_path)
    package, demo = _installed(python, tmp_path)  # run outside the checkout: only the install can answer
    assert package == (ROOT / "lens" if editable else tmp_path / "venv" / package.relative_to(tmp_path / "venv"))
    assert editable or ROOT not in package.parents
    assert (demo / "config.json").is_file() and (demo / "model.safetensors").is_file()
    assert (demo == ROOT / "models" / "demo") == editable
    usage = _run([tmp_path / "venv" / "bin" / "logit-lens", "--help"], tmp_path)
    assert usage.startswith("usage: ") and "--backend" in usage
