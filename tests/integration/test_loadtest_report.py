"""The report rendered from recorded results draws in headless Chromium, plots included."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from PIL import Image, ImageStat

from tests.helpers.report_records import write_synthetic_report


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return write_synthetic_report(tmp_path_factory.mktemp("report"))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium_with_its_plots(report_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.fail("chromium is not installed; `make test` installs it (apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1400,2400",
               f"--screenshot={shot}", (report_dir / "report.html").as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    assert max(ImageStat.Stat(image.convert("L")).var[0], 0) > 500  # far from a blank page
    colored = sum(1 for r, g, b in image.getdata() if max(r, g, b) - min(r, g, b) > 80)
    assert colored > 2000, f"only {colored} colored pixels: the plots did not draw"
