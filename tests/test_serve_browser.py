"""The ``glip serve`` page in a real browser: Debian's chromium, headless, driven by Playwright
(the system browser, no browser download). It uploads a Shapes-world scene, types the classes,
submits, and the test reads what the page drew: the boxes listed in the DOM, the box colour on the
canvas, the threshold slider filtering without a new request, and an error shown for a bad prompt.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="glip serve needs the serve extra (fastapi, uvicorn, python-multipart)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the dev extra)")

from glip import GLIP  # noqa: E402
from glip.data.shapes_world import SHAPES, encode_png, render_scene, sample_scene  # noqa: E402
from glip.serve import BackgroundServer, ServeOptions, create_app  # noqa: E402


def _chromium() -> str | None:
    for candidate in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@lru_cache(maxsize=1)
def _nano() -> GLIP:
    return GLIP.from_pretrained("glip_nano")


@pytest.fixture(scope="module")
def browser_page() -> Iterator:
    executable = _chromium()
    if executable is None:
        reason = "chromium not found on PATH (apt-get install chromium; .ci/run installs it)"
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    with BackgroundServer(create_app(_nano(), ServeOptions(batch_wait_ms=1), model_name="glip_nano")) as server:
        with sync_api.sync_playwright() as playwright:
            # --no-sandbox: CI containers run as root, where chromium's sandbox refuses to start.
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                problems: list[str] = []
                page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.goto(server.url + "/")
                # Waits use selectors: the page's policy forbids the string evaluation of wait_for_function.
                page.wait_for_selector("#model-line:has-text('glip_nano')")
                yield page, problems
            finally:
                browser.close()


def _pixel(page, x: float, y: float) -> list[int]:
    return page.evaluate("([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')"
                         ".getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3))", [x, y])


def _rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[index:index + 2], 16) for index in (1, 3, 5)]


def test_page_draws_the_detections_and_the_slider_filters_them(browser_page, tmp_path: Path) -> None:
    page, problems = browser_page
    pixels = render_scene(sample_scene(7, "test", 0))
    image_path = tmp_path / "scene.png"
    image_path.write_bytes(encode_png(pixels))
    expected = _nano().predict(pixels, classes=list(SHAPES))  # at the model's default threshold

    page.set_input_files("#image", str(image_path))
    page.fill("#classes", ", ".join(SHAPES))
    page.click("#submit")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)

    # The slider starts at the model's default threshold: the page shows what predict returns.
    summary = page.locator("#summary")
    assert int(summary.get_attribute("data-boxes")) == len(expected) > 0
    assert set(summary.get_attribute("data-phrases").split(",")) == set(expected.phrases)
    assert page.locator("#detections li").count() == len(expected)
    # The best box is drawn last, in its label's colour: the middle of its left edge has that colour.
    x1, y1, _, y2 = expected.boxes[0].tolist()
    colour = page.locator("#detections li").first.get_attribute("data-colour")
    assert _pixel(page, x1, (y1 + y2) / 2) == _rgb(colour)
    assert _pixel(page, x1, (y1 + y2) / 2) != pixels[int(y1 + y2) // 2, int(x1)].tolist()

    # Raising the threshold hides the weaker boxes at once, without a new request.
    higher = math.ceil(float(expected.scores[1]) * 100) / 100  # on the slider's 0.01 steps
    page.locator("#threshold").fill(f"{higher:.2f}")
    page.wait_for_selector(f"#summary[data-boxes='{int((expected.scores > higher).sum())}']")
    x1, y1, _, y2 = expected.boxes[-1].tolist()  # the weakest box is gone: its edge shows the image again
    assert _pixel(page, x1, (y1 + y2) / 2) == pixels[int(y1 + y2) // 2, int(x1)].tolist()
    assert problems == []


def test_page_shows_the_reason_of_a_refused_request(browser_page, tmp_path: Path) -> None:
    page, problems = browser_page
    image_path = tmp_path / "scene.png"
    image_path.write_bytes(encode_png(render_scene(sample_scene(7, "test", 2))))
    page.set_input_files("#image", str(image_path))
    page.fill("#classes", " , ")
    page.click("#submit")
    page.wait_for_selector("#status:has-text('Error')", timeout=60_000)
    assert "empty prompt" in page.locator("#status").text_content()
    # The failed request (HTTP 400) is the only console error the page may show.
    assert all("400" in problem for problem in problems), problems
