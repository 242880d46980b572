"""Debian's chromium, headless, driven through Debian's chromedriver (never a downloaded browser build).

`headless_chromium` skips, saying why, where either package or selenium is missing (under CI that is a
failure: .ci/system-deps installs them). The browser and its driver are ended by selenium's own handles
on them, and the profile is a fresh directory of the test's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"
KIOSK = (1280, 800)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for name, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(name) is None:
            return f"{name} is not installed (Debian package {package}; .ci/system-deps installs it)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (a dev dependency: pip install -e '.[dev]')"
    return None


@contextmanager
def headless_chromium(profile: Path, size: tuple[int, int] = KIOSK) -> Iterator[WebDriver]:
    reason = chromium_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs it through .ci/system-deps)")
        pytest.skip(reason)
    from selenium import webdriver  # noqa: PLC0415 - only where the browser is there
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which(CHROMIUM))
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    # An explicit driver and binary: selenium's manager is never asked to download either.
    driver = webdriver.Chrome(service=Service(str(shutil.which(CHROMEDRIVER))), options=options)
    try:
        # The page's own viewport at the screen's size (the window's includes what headless draws around it).
        width, height = size
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        yield driver
    finally:
        driver.quit()
