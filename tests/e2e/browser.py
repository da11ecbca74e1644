"""Debian's chromium, headless, driven by selenium through Debian's chromedriver."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/setup.sh installs Debian's {package}"
    return path


@contextmanager
def headless_chromium(profile: Path, width: int = 1280, height: int = 1120) -> Iterator[webdriver.Chrome]:
    """A headless chromium with its own profile folder; quit (browser and driver) on exit.

    Both binaries are named, so selenium never looks for (or downloads) a driver of its own.
    """
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI, where chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver", "chromium-driver")))
    try:
        yield driver
    finally:
        driver.quit()
