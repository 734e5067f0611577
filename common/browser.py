"""The one place that starts a headless Chromium: Debian's ``chromium`` driven by Selenium through ``chromedriver``.

Selenium is pointed at those two executables (its own browser download fails offline). ``missing()`` names what
is not installed, in one line; ``headless_chromium()`` raises ``BrowserMissing`` with that line, and a
PaperzooError when the browser does not start.
"""

from __future__ import annotations

import importlib.util
import shutil

from common.errors import PaperzooError

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"


class BrowserMissing(PaperzooError):
    """Chromium, chromedriver or selenium is not installed."""


def missing() -> str | None:
    """What a headless Chromium lacks here, as one line (None when nothing is missing)."""
    lacks = [name for name in (CHROMIUM, CHROMEDRIVER) if not shutil.which(name)]
    if importlib.util.find_spec("selenium") is None:
        lacks.append("selenium (pip install -e '.[dev]')")
    if not lacks:
        return None
    return f"no {', '.join(lacks)} (apt-get install chromium chromium-driver)"


def headless_chromium(width: int = 1280, height: int = 1600):
    """A Selenium ``webdriver.Chrome`` on a headless Chromium with a ``width`` x ``height`` window; the caller
    quits it."""
    lacks = missing()
    if lacks:
        raise BrowserMissing(lacks)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which(CHROMEDRIVER))
    try:
        return webdriver.Chrome(options=options, service=service)
    except WebDriverException as err:  # e.g. a chromedriver of another version than chromium
        raise PaperzooError(f"headless Chromium did not start: {first_line(err)}") from None


def first_line(err: Exception) -> str:
    """The first line of a Selenium error (its message runs on with a stack trace of the browser)."""
    text = getattr(err, "msg", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
