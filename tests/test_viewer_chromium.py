"""The HTML export in a real browser: headless Chromium opens it from disk, the search finds a label,
sorting works, and a label or description carrying a script payload stays text.

Chromium's --dump-dom prints the DOM after the page's scripts ran; the viewer reads `?q=` / `#q=` and
`#sort=` at load, so each check is one page load. Skipped where Debian's `chromium` is not installed.
"""

from __future__ import annotations

import contextlib
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
    assert len(re.findall(r'<b class="l\d+" title="\w\d+: [0-9.]+">', dom)) == 7
    assert dom.count("<circle ") == 9  # ten held-out proteins, two of them counted on one dot


# --- Back/Forward in a real browser session (DevTools protocol over a pipe, no extra package) ---------
class Browser:
    """Headless Chromium driven over --remote-debugging-pipe: commands on fd 3, replies on fd 4, each a
    JSON message ended by NUL. Enough of the DevTools protocol to open a page, run a line of script
    in it and wait for a condition."""

    def __init__(self, profile: Path) -> None:
        import os

        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions", "--no-first-run",
             "--no-default-browser-check", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read_message(self) -> dict:
        import json
        import os

        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, *, session: bool = False) -> dict:
        import json
        import os

        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        """Poll `expression` until it is truthy (a navigation in between is fine)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except AssertionError:  # the page was between documents
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def close(self) -> None:
        import os

        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(profile: Path):
    session = Browser(profile)
    yield session
    session.close()


ROWS = "Array.from(document.querySelectorAll('#rows tr')).map(r => Number(r.dataset.feature))"
ON_INDEX = "location.pathname.endsWith('/index.html') && document.querySelectorAll('#rows tr').length > 0"


def test_back_from_a_feature_keeps_the_search_sort_and_filter(site, browser):
    browser.goto((site / "index.html").as_uri())
    browser.wait_for(ON_INDEX)
    assert browser.evaluate(ROWS) == [3, 7, 20, 11]
    browser.evaluate("var q = document.getElementById('q'); q.value = 'zinc';"
                     "q.dispatchEvent(new Event('input'));"
                     "var s = document.getElementById('sort'); s.value = 'feature';"
                     "s.dispatchEvent(new Event('change')); true")
    assert browser.evaluate(ROWS) == [3, 7]
    assert browser.evaluate("location.hash") == "#q=zinc&sort=feature"  # the state sits in the URL
    browser.evaluate("document.querySelector('#rows a[href$=\"/7.html\"]').click(); true")
    browser.wait_for("location.pathname.endsWith('/features/7.html') && document.readyState === 'complete'")
    browser.evaluate("history.back(); true")
    browser.wait_for(ON_INDEX)
    assert browser.evaluate("document.getElementById('q').value") == "zinc"
    assert browser.evaluate("document.getElementById('sort').value") == "feature"
    assert browser.evaluate(ROWS) == [3, 7]  # the table matches the box, not all four rows
    assert browser.evaluate("document.getElementById('count').textContent") == "2 of 4 features"
    browser.evaluate("history.forward(); true")
    browser.wait_for("location.pathname.endsWith('/features/7.html')")
    browser.evaluate("history.back(); true")
    browser.wait_for(ON_INDEX)
    assert browser.evaluate(ROWS) == [3, 7]


def test_filter_and_page_survive_a_reload_from_the_url(site, browser):
    browser.goto((site / "index.html").as_uri() + "#validated=1&sort=label")
    browser.wait_for(ON_INDEX)
    assert browser.evaluate("document.getElementById('validated').checked") is True
    labels = browser.evaluate(
        "Array.from(document.querySelectorAll('#rows td.label')).map(t => t.textContent)")
    assert labels == sorted(labels) and len(labels) == 3  # the unvalidated feature is filtered out
    assert browser.evaluate("document.getElementById('page').textContent") == "page 1 of 1"


def test_ten_thousand_rows_are_paged_and_searched_in_full(tmp_path, browser):
    from storage.export import ExportSae
    from storage.viewer_index import render_index_page

    rows = [{"feature": n, "label": f"label {n}", "description": "d", "concepts": [], "pearson": n / 10240,
             "spearman": None, "n_heldout": 24, "validated": n % 2 == 0, "frac_proteins": 0.1,
             "top_concept": None, "n_suggestions": 0} for n in range(10240)]
    page = tmp_path / "index.html"
    page.write_text(render_index_page(ExportSae(sae_id="big", d_sae=10240), rows, has_examples=False))
    browser.goto(page.as_uri())
    browser.wait_for(ON_INDEX)
    assert len(browser.evaluate(ROWS)) == 100  # one page of rows in the table, not 10,240
    assert browser.evaluate("document.getElementById('page').textContent") == "page 1 of 103"
    assert browser.evaluate(ROWS)[0] == 10239  # best Pearson r first, over all rows
    browser.evaluate("document.getElementById('next').click(); true")
    assert browser.evaluate("location.hash") == "#page=2"
    assert browser.evaluate(ROWS)[0] == 10139
    browser.evaluate("var q = document.getElementById('q'); q.value = 'label 17';"
                     "q.dispatchEvent(new Event('input')); true")
    matching = sum("17" in str(n) for n in range(10240))  # every term must match: "label" always does
    assert browser.evaluate("document.getElementById('count').textContent") == f"{matching} of 10240 features"
    assert browser.evaluate("document.getElementById('page').textContent") == "page 1 of 4"
    assert browser.evaluate("location.hash") == "#q=label+17"  # a new search starts at page 1


def test_payloads_in_a_trace_suggestion_and_annotation_stay_text(bundle, tmp_path, profile):  # noqa: F811
    import json

    from storage.export import ExportAnnotation
    from storage.export_html import render_feature
    from storage.suggestions import Evidence, Suggestion

    payload = "<img src=x onerror=\"document.title='pwned'\" id=\"pwned-x\">"
    feature = bundle.features[0]
    trace = {"version": 1, "oneshot": {"label": payload, "description": payload, "validation_r": 0.1},
             "steps": [{"kind": "tool", "tool": payload, "args": {"q": payload}, "summary": payload,
                        "ok": True},
                       {"kind": "note", "text": payload}, {"kind": payload}],
             "committed": {"label": payload, "description": payload, "source": payload},
             "stopped": payload, "reason": payload, "agent": payload}
    suggestion = Suggestion(sae_id="demo", feature=3, accession=feature.examples[0].accession,
                            concept=payload, kind="residue", residues=((2, 5),), activation=1.0,
                            normalized=0.5, evidence=Evidence(f1=0.5), rank_score=0.5)
    example = feature.examples[0].model_copy(update={
        "annotations": [ExportAnnotation(type="Domain", start=1, end=30, description=payload)],
        "suggestions": [suggestion], "name": payload, "organism": payload})
    record = feature.record.model_copy(update={"trace": json.dumps(trace)})
    page = tmp_path / "3.html"
    page.write_text(render_feature(bundle, feature.model_copy(update={
        "record": record, "suggestions": [suggestion], "examples": [example, *feature.examples[1:]]})))
    dom = dump_dom(page.as_uri(), profile)
    assert title(dom).startswith("Feature 3: ")
    assert_no_payload_elements(dom)
    assert dom.count("&lt;img src=x onerror=") >= 10  # each shown as text
