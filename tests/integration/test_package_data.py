"""What a non-editable install carries (the Docker image installs quantserve that way): the wheel built from the
working tree holds every data file the packages read at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("quantserve", "quantize", "serving", "loadtest")
# documents, pictures, and a script run from the repo
NOT_RUNTIME = ("loadtest/example/", "quantize/FIDELITY.md", "quantize/fidelity_frontier.png",
               "loadtest/compare_guidellm.sh")


def tracked_data_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", *PACKAGES], cwd=REPO, capture_output=True, text=True, check=True)
    return [path for path in listed.stdout.split() if not path.endswith(".py") and not path.startswith(NOT_RUNTIME)]


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the tree (an in-tree build would leave build/ in the repo)."""
    source = tmp_path / "source"
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    return next((tmp_path / "dist").glob("quantserve-*.whl"))


def test_the_wheel_carries_every_data_file(tmp_path):
    expected = tracked_data_files()
    assert "quantserve/prices.yaml" in expected
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        missing = sorted(set(expected) - set(wheel.namelist()))
    assert missing == [], f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
