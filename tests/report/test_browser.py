"""The report opened in headless Chromium (Debian's package, installed by .ci/run, never by the test):
a screenshot saved under test-artifacts/, and what the rendered page shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WINDOW = (1280, 2400)


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def chromium() -> str:
    """Path of the chromium binary; fails on CI and skips elsewhere when it is not installed."""
    path = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed (Debian: apt-get install chromium; .ci/run installs it on CI)"
        if on_ci():
            pytest.fail(f"{reason}: the browser test must run on CI")
        pytest.skip(reason)
    return path


def run_chromium(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess:
    """Headless, offline-safe Chromium on a file:// page; `virtual-time-budget` lets images load first."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=5000",
        *action,
        page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result


def test_report_renders_in_chromium_with_every_image_loaded(built_report, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report-screenshot.png"
    screenshot.unlink(missing_ok=True)
    run_chromium(built_report.index, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    with Image.open(screenshot) as image:
        assert image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert screenshot.stat().st_size > 20_000 and colours is not None and len(colours) > 100  # not blank

    dom = run_chromium(built_report.index, tmp_path / "profile-dom", "--dump-dom").stdout
    (ARTIFACTS / "report-dom.html").write_text(dom, encoding="utf-8")
    for cohort in ("site = east", "site = north", "site = south", "whole run"):
        assert cohort in dom
    for message in built_report.flags[built_report.flags["scope"] == "cohort"]["message"]:
        assert message.replace("'", "&#39;") in dom or message in dom
    assert "Looks at the image border" in dom
    assert "image not found" not in dom.replace('"image not found: "', "")  # only the handler's own text
    assert dom.count("<img ") == len(built_report.page.images)


def test_a_broken_image_link_shows_up_in_the_rendered_page(built_report, tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(built_report.index.parent, copy)
    (copy / "img" / "cohort-01-answer.png").unlink()
    dom = run_chromium(copy / "index.html", tmp_path / "profile", "--dump-dom").stdout
    assert 'class="missing">image not found: img/cohort-01-answer.png</p>' in dom
    assert dom.count("<img ") == len(built_report.page.images) - 1


# measures, once the images have loaded, every figure's image and caption boxes into a data attribute
_MEASURE = """<script>
window.addEventListener("load", function () {
  var boxes = [];
  document.querySelectorAll("figure").forEach(function (figure) {
    var img = figure.querySelector("img"), caption = figure.querySelector("figcaption");
    if (!img || !caption) return;
    var i = img.getBoundingClientRect(), c = caption.getBoundingClientRect();
    boxes.push([i.left, i.top, i.right, i.bottom, c.left, c.top, c.right, c.bottom].join(","));
  });
  document.body.setAttribute("data-boxes", boxes.join(";"));
});
</script>"""


def test_captions_lie_outside_the_images_they_describe(built_report, tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(built_report.index.parent, copy)
    page = copy / "index.html"
    page.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8"
    )
    dom = run_chromium(page, tmp_path / "profile", "--dump-dom").stdout
    boxes = [
        [float(value) for value in box.split(",")]
        for box in re.search(r'data-boxes="([^"]*)"', dom)[1].split(";")
    ]
    gallery_figures = sum(src.startswith("img/item-") for src in (i["src"] for i in built_report.page.images))
    assert len(boxes) >= gallery_figures > 0
    for left, top, right, bottom, c_left, c_top, c_right, c_bottom in boxes:
        assert bottom - top > 20 and right - left > 20  # the image loaded and has a size
        overlap = min(right, c_right) > max(left, c_left) and min(bottom, c_bottom) > max(top, c_top)
        assert not overlap and c_top >= bottom - 0.5  # the caption sits below the image, not on it
