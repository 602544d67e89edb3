"""Every page of the lab in a real Chromium: it loads with no console error and no request leaving 127.0.0.1
(the `page` fixture fails the test on either), keeps its state in the URL, and hides its controls in teacher
mode."""

import pytest

from cnnlab.lab.app import PAGES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_loads_clean(page, path):
    page.goto(page.lab + path)
    page.wait_for_load_state("networkidle")
    assert page.locator("header.lab a.here").count() == 1
    assert page.locator("h1").first.inner_text().strip()
    assert page.locator(".error:visible").count() == 0, page.locator(".error").all_inner_texts()


@pytest.mark.parametrize("path", [p for p in PAGES if p != "/"])
def test_teacher_mode_hides_the_controls_and_stays_on(page, path):
    page.goto(page.lab + path + "?teacher=1")
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.body.classList.contains('teacher')")
    assert page.locator(".control:visible").count() == 0
    hrefs = page.locator("header.lab a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert hrefs and all(h.endswith("?teacher=1") for h in hrefs)
