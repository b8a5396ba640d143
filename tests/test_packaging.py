"""Installed like any package: the wheel carries the configs and trains from another directory."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from helpers_runs import TINY_RUN

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "configs", "mwm", "agents", "envs", "replay")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_package_of_the_source_tree():
    setuptools = pyproject()["tool"]["setuptools"]
    found = {str(path.parent.relative_to(ROOT)).replace(os.sep, ".")
             for top in ("mwm", "agents", "envs", "replay") for path in (ROOT / top).rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"mwm.configs"}
    assert setuptools["package-dir"] == {"mwm.configs": "configs"}
    assert setuptools["package-data"]["mwm.configs"] == ["*.yaml"]


def test_license_file_matches_pyproject():
    license_text = (ROOT / "LICENSE").read_text()
    assert pyproject()["project"]["license"] == {"text": "MIT"}
    assert license_text.startswith("MIT License") and "Permission is hereby granted, free of charge" in license_text


@pytest.mark.slow
def test_a_built_wheel_trains_and_evaluates_from_another_directory(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: a wheel cannot be built offline without it")
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:  # a clean copy: the build must not leave build/ or *.egg-info in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MWM_KILL_AT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    def run(*cmd, cwd=tmp_path, timeout=300):
        done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        source)
    wheel = next((tmp_path / "dist").glob("mwm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for config in (ROOT / "configs").glob("*.yaml"):
        assert f"mwm/configs/{config.name}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)

    # a fresh venv with only the wheel installed into it, that sees the packages of the
    # interpreter running the tests (torch etc.): a .pth file names their folders. Not
    # --system-site-packages, which would see the base interpreter's instead of a venv's.
    # Folders named in a .pth file are not scanned for .pth files of their own, so an
    # editable install of mwm there does not shadow the wheel.
    run(sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    parents = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (Path(purelib) / "_test_parent_packages.pth").write_text("\n".join(parents) + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "-q", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import mwm, mwm.config as c; print(mwm.__file__); print(c.CONFIG_DIR)", cwd=elsewhere)
    module_file, config_dir = where.stdout.split()
    assert module_file.startswith(str(tmp_path / "venv")), module_file
    assert config_dir.startswith(str(tmp_path / "venv")) and config_dir.endswith(os.path.join("mwm", "configs"))

    run(python, "-m", "mwm.train", "--logdir", "run", *TINY_RUN, "--steps", "10", cwd=elsewhere)
    assert (elsewhere / "run" / "checkpoints" / "checkpoint-10.pt").is_file()
    out = run(python, "-m", "mwm.eval", "--logdir", "run", "--episodes", "1", cwd=elsewhere)
    assert (elsewhere / "run" / "eval.json").is_file() and "return" in out.stdout


def test_no_file_points_outside_the_repository():
    needles = ("DESIGN" + ".md", "../" + "shared")  # spelled apart so that this file does not match
    offenders = []
    for path in ROOT.rglob("*"):
        if any(part in (".git", "runs", "__pycache__", ".pytest_cache") for part in path.parts):
            continue
        if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".toml", ".txt", ".cfg"):
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not offenders, offenders
