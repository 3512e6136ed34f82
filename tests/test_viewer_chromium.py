"""The HTML export in a real browser: headless Chromium opens it from disk, the search finds a label,
sorting works, and a label or description carrying a script payload stays text.

Chromium's --dump-dom prints the DOM after the page's scripts ran; the viewer reads `?q=` / `#q=` and
`#sort=` at load, so each check is one page load. Skipped where Debian's `chromium` is not installed.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from storage.export import ExportBundle, write_export
from tests.test_export import bundle, exports, seeded  # noqa: F401  (fixtures)
from tests.test_query import PAYLOAD_LABEL

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="headless Chromium is not installed (Debian: apt-get install chromium)"),
]


def dump_dom(url: str, profile: Path) -> str:
    """The DOM of `url` after load, as Chromium serialises it."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", "--no-first-run",
        "--no-default-browser-check", f"--user-data-dir={profile}", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def rows(dom: str) -> list[int]:
    """The feature ids of the table rows the viewer's script rendered, in order."""
    return [int(n) for n in re.findall(r'<tr class="feature-row" data-feature="(\d+)">', dom)]


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(dom: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element of the dumped DOM with its attributes (text stays text)."""
    parser = _Elements()
    parser.feed(dom)
    return parser.tags


def assert_no_payload_elements(dom: str) -> None:
    tags = elements(dom)
    assert not [attrs for _, attrs in tags if (attrs.get("id") or "").startswith("pwned")]
    assert not [attrs for _, attrs in tags if "onerror" in attrs]
    assert [tag for tag, _ in tags].count("img") == 0


def title(dom: str) -> str:
    match = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert match
    return html.unescape(match.group(1))


@pytest.fixture
def site(bundle: ExportBundle, exports: Path) -> Path:  # noqa: F811
    write_export(bundle, "html", exports / "site")
    return exports / "site"


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return tmp_path / "chromium-profile"


def test_the_search_finds_a_label(site, profile):
    dom = dump_dom((site / "index.html").as_uri() + "?q=zinc", profile)
    assert rows(dom) == [3, 7]  # zinc in 3's label and 7's description, best score first
    assert "Zinc finger C2H2 cysteine" in dom
    assert "2 of 4 features" in dom


def test_the_hash_query_and_sort_are_read_at_load(site, profile):
    index = (site / "index.html").as_uri()
    assert rows(dump_dom(index, profile)) == [3, 7, 20, 11]  # by Pearson r, best first
    assert rows(dump_dom(index + "#sort=feature", profile)) == [3, 7, 11, 20]
    assert rows(dump_dom(index + "#q=membrane", profile)) == [7]
    assert rows(dump_dom(index + "?q=ribosome", profile)) == []


def test_a_script_payload_in_the_index_stays_text(site, profile):
    dom = dump_dom((site / "index.html").as_uri() + "?q=kinase", profile)
    assert rows(dom) == [20]
    assert title(dom) == "plmlabel: demo"  # the payload would set it to 'pwned'
    assert_no_payload_elements(dom)  # no element came from the payload
    assert "<script>document.title" not in dom
    assert "&lt;img src=x onerror=" in dom  # shown as text
    assert "&lt;/script&gt;&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom


def test_a_script_payload_on_the_feature_page_stays_text(site, profile):
    dom = dump_dom((site / "features" / "20.html").as_uri(), profile)
    assert title(dom) == f"Feature 20: {PAYLOAD_LABEL} (demo)"
    assert_no_payload_elements(dom)
    assert "<script" not in dom
    assert '&lt;b id="pwned-b"&gt;ATP kinase&lt;/b&gt;' in dom


def test_the_feature_page_shows_coloured_sequences(site, profile):
    dom = dump_dom((site / "features" / "3.html").as_uri(), profile)
    assert "Zinc finger C2H2 cysteine" in dom
    assert len(re.findall(r'<span class="lv\d+" title="\w\d+: [0-9.]+">', dom)) == 7
    assert dom.count("<circle ") == 9  # ten held-out proteins, two of them counted on one dot
