"""report.html in a real headless browser (Chromium through Selenium): the figures load, verdicts are coloured.

Skipped where Chromium is not installed, except under CI (CI=true), where .ci/run installs it and a
missing browser is a failure.
"""

import pytest

from common.report import build_report
from common.testing import browser_or_skip
from common.tracking import Tracker


def rgb(css: str) -> tuple[int, ...]:
    """``rgb(218, 251, 225)`` or ``rgba(…)`` -> (218, 251, 225)."""
    return tuple(int(float(part)) for part in css[css.index("(") + 1 : -1].split(",")[:3])


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    """The template's report of one cpu reproduction: the MLP at 96% (reproduced), +6 pts over linear (not)."""
    root = tmp_path_factory.mktemp("html")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker("_template", uri)
    for variant, acc in (("mlp", 0.96), ("linear", 0.90)):
        tags = {"paper": "_template", "task": "rings", "variant": variant, "seed": "0", "preset": "cpu",
                "reproduction": "r", "reproduction_size": "2", "git_commit": "abc", "device_name": "cpu"}  # fmt: skip
        tracker.start(f"rings/{variant}/s0", tags, {})
        for step, loss in ((1, 1.0), (2, 0.6), (3, 0.4)):
            tracker.log_metrics({"train/loss": loss}, step)
        tracker.log_metrics({"test/acc": acc}, 3)
        tracker.end("FINISHED")
    build_report("_template", uri=uri, out_root=root / "reports")
    return root / "reports" / "_template" / "report.html"


def test_the_report_renders_with_its_figures_and_coloured_verdicts(report_html):
    driver = browser_or_skip()
    try:
        driver.get(report_html.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth, i.clientWidth]);"
        )
        assert len(images) == 3, images  # the training curves and one figure per measured claim
        for alt, complete, natural, shown in images:
            assert complete and natural > 0 and shown > 0, f"figure '{alt}' did not load: {images}"
        colours = {
            css: rgb(
                driver.find_element("css selector", f"td.verdict.{css}").value_of_css_property(
                    "background-color"
                )
            )
            for css in ("reproduced", "not-reproduced")
        }
        red, green, blue = colours["reproduced"]
        assert green > red + 20 and green > blue + 10, colours  # greenish
        red, green, blue = colours["not-reproduced"]
        assert red > green + 10 and red > blue + 10, colours  # reddish
        scroll_width = driver.execute_script("return document.documentElement.scrollWidth;")
        assert scroll_width <= 1280, "a wide table widens the page instead of scrolling in its box"
    finally:
        driver.quit()
