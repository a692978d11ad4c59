"""Headless Chromium for the vetting page's tests and benchmark: Debian's chromium and chromium-driver.

Nothing is downloaded: Selenium is given both executables, and Selenium Manager is kept offline.
Set ``OTRAIN_CHROMIUM`` and ``OTRAIN_CHROMEDRIVER`` to use other builds (Google Chrome and its
driver, say).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The flags every session starts with: no first-run chores, no background traffic, no GPU.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
)


def browser_executables() -> tuple[str, str] | None:
    """Return (browser, driver) paths, or None when either is missing."""
    browser = os.environ.get("OTRAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")
    driver = os.environ.get("OTRAIN_CHROMEDRIVER") or shutil.which("chromedriver")
    if browser is None or driver is None:
        return None
    return browser, driver


@contextmanager
def chromium(
    downloads: Path | None = None, width: int = 1500, height: int = 1000, offline: bool = True
) -> Iterator[Any]:
    """Start headless Chromium with a fresh profile; stop it and remove the profile on exit.

    Parameters
    ----------
    downloads : Path, optional
        Folder that receives downloads (the page's CSV export).
    width, height : int
        The window size in CSS pixels.
    offline : bool
        Cut the network off (DevTools network emulation) before any page is opened.

    Yields
    ------
    selenium.webdriver.Chrome
        The driver, with the performance log on (every network request the page makes).
    """
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = browser_executables()
    if found is None:
        raise RuntimeError("Chromium or ChromeDriver is missing (Debian: apt-get install chromium chromium-driver)")
    browser, driver_path = found
    profile = tempfile.mkdtemp(prefix="otrain-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    if downloads is not None:
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        if offline:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd(
                "Network.emulateNetworkConditions",
                {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            )
        if downloads is not None:
            driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> list[str]:
    """Return the URLs of the requests the browser sent since the last call (its performance log)."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
