"""`plmlabel serve` in a real browser: Playwright (from pip) drives Debian's /usr/bin/chromium (no browser
download, no `playwright install`) against uvicorn on a free loopback port.

Checked: search, open a feature, Back keeps the search; paste a sequence and see features fire; stored
and pasted script payloads never run. The same run takes the README's screenshots of serve and of the
static viewer: into docs/screenshots/ when PLMLABEL_SCREENSHOTS names that folder, else into a temporary
folder (so they are always taken, and a plain test run leaves the work tree as it was).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serve_fixtures import PAYLOAD_FEATURE, SAE_ID, running_server, shared_live_workspace
from tests.test_serve import SEQUENCE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="headless Chromium is not installed (Debian: apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def live():
    from tests.conftest import SHARED_SWISSPROT

    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    return shared_live_workspace(SHARED_SWISSPROT)


@pytest.fixture(scope="module")
def base_url(live):
    from agent.serve.app import create_app

    with running_server(create_app(live)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield tab
    context.close()
    assert dialogs == []  # no alert() from any payload


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("PLMLABEL_SCREENSHOTS")
    target = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


def row_ids(tab) -> list[int]:
    ids = tab.locator("tr.feature-row").evaluate_all("rows => rows.map(r => r.dataset.feature)")
    return [int(n) for n in ids]


def assert_nothing_ran(tab, title_start: str) -> None:
    assert tab.title().startswith(title_start)  # a payload would set it to 'pwned'
    assert tab.locator("[id^=pwned]").count() == 0
    assert tab.locator("img").count() == 0
    assert tab.locator("script").count() == 0


def test_search_open_a_feature_and_back_keeps_the_search(page, base_url, shots):
    page.goto(base_url + "/")  # redirects to the only SAE
    assert page.locator("h1").inner_text() == f"Features of SAE {SAE_ID}"
    assert len(row_ids(page)) == 5
    page.fill("#q", "zinc")
    page.click("#search")
    page.wait_for_url("**q=zinc**")
    assert row_ids(page) == [1]
    page.screenshot(path=str(shots / "serve-search.png"))
    page.click("tr.feature-row a >> nth=1")
    page.wait_for_url("**/features/1")
    assert "Zinc finger cysteine" in page.locator("h1").inner_text()
    assert page.locator("div.example").count() >= 3
    assert "Zinc finger:C2H2-type" in page.content()  # its suggestion
    page.screenshot(path=str(shots / "serve-feature.png"), full_page=True)
    page.go_back()
    page.wait_for_url("**q=zinc**")
    assert page.input_value("#q") == "zinc"
    assert row_ids(page) == [1]
    page.go_forward()
    assert "Zinc finger cysteine" in page.locator("h1").inner_text()


def test_paste_a_sequence_and_see_features_fire(page, base_url, shots):
    page.goto(f"{base_url}/sae/{SAE_ID}/analyze")
    page.fill("#text", ">pasted example\n" + SEQUENCE)
    page.click("#analyze")
    page.wait_for_selector("#fired")
    fired = page.locator("tr.fired")
    assert fired.count() >= 3
    assert page.locator("#chosen-seq [title]").count() > 0  # shaded residues, each with its value
    page.screenshot(path=str(shots / "serve-paste.png"), full_page=True)
    second = fired.nth(1).get_attribute("data-feature")
    fired.nth(1).locator("a.residues").click()
    page.wait_for_selector("#residues")
    assert page.locator("#residues").inner_text() == f"Feature {second} on each residue"


def test_bad_input_is_a_message_and_payloads_do_not_run(page, base_url):
    page.goto(f"{base_url}/sae/{SAE_ID}/analyze")
    page.fill("#text", "MKV<img src=x onerror=alert(1) id=pwned-paste>")
    page.click("#analyze")
    assert "residue 4 is '<'" in page.locator("#message").inner_text()
    assert_nothing_ran(page, "Paste a sequence")
    page.fill("#text", "M" * 10_000)
    page.click("#analyze")
    assert "10,000 residues" in page.locator("#message").inner_text()
    page.goto(f"{base_url}/sae/{SAE_ID}/features/{PAYLOAD_FEATURE}")
    assert_nothing_ran(page, f"Feature {PAYLOAD_FEATURE}: <img src=x")
    assert "ATP" in page.locator(".description").inner_text()
    page.goto(f"{base_url}/sae/{SAE_ID}/?q=kinase")
    assert row_ids(page) == [PAYLOAD_FEATURE]
    assert_nothing_ran(page, "plmlabel: tiny")
    page.goto(f"{base_url}/sae/{SAE_ID}/features/4000")
    assert "there is no feature 4000" in page.locator("#message").inner_text()


def test_screenshots_of_the_static_viewer(page, live, tmp_path, shots):
    from agent.export_bundle import gather_bundle
    from storage.export import write_export

    with live.db() as db:
        bundle = gather_bundle(live, db, SAE_ID, "html")
    write_export(bundle, "html", tmp_path / "site")
    page.goto((tmp_path / "site" / "index.html").as_uri())
    assert page.locator("tr.feature-row").count() == 5
    page.screenshot(path=str(shots / "viewer-index.png"))
    page.goto((tmp_path / "site" / "features" / "1.html").as_uri())
    assert "Zinc finger cysteine" in page.locator("h1").inner_text()
    page.screenshot(path=str(shots / "viewer-feature.png"), full_page=True)
    assert all((shots / name).stat().st_size > 5000 for name in
               ("viewer-index.png", "viewer-feature.png"))
