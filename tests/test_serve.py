"""`plmlabel serve` through Starlette's TestClient: pages from the database and the index, pasting a
sequence, suggestions, and bad input (each a clear message in the page; the server keeps serving;
stored and pasted HTML stays text)."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from agent.serve.app import create_app
from agent.serve.limits import Limits, PasteError, check_paste, parse_form
from agent.serve.render import SERVE_CSP, VIEWER_PAGE
from tests.serve_fixtures import LABELS, PAYLOAD_FEATURE, SAE_ID, shared_live_workspace

SEQUENCE = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEG"
            "LYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPD")


@pytest.fixture(scope="module")
def live(request):
    from tests.conftest import SHARED_SWISSPROT

    if not SHARED_SWISSPROT.exists():
        pytest.skip("../shared/data/swissprot is not present")
    return shared_live_workspace(SHARED_SWISSPROT)


@pytest.fixture(scope="module")
def client(live):
    with TestClient(create_app(live), raise_server_exceptions=False) as test_client:
        yield test_client


def message(page: str) -> str:
    found = re.search(r'<p class="message" id="message">(.*?)</p>', page, re.S)
    assert found, page[-2000:]
    return found.group(1)


def rows(page: str, kind: str = "feature-row") -> list[int]:
    return [int(n) for n in re.findall(rf'<tr class="{kind}" data-feature="(\d+)">', page)]


def assert_no_markup_from(page: str) -> None:
    """No element a payload would create, and no script element at all."""
    assert "<script" not in page
    assert 'id="pwned' not in page and "<img" not in page
    assert "&lt;img src=x onerror=" in page or "pwned" not in page


# --- pages -------------------------------------------------------------------------------------------
def test_home_redirects_to_the_only_sae(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/sae/{SAE_ID}/"


def test_every_page_forbids_scripts(client):
    response = client.get(f"/sae/{SAE_ID}/")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"


def test_search_lists_labels_by_score_and_finds_words(client):
    everything = client.get(f"/sae/{SAE_ID}/").text
    assert rows(everything) == sorted(LABELS, key=lambda f: -LABELS[f][3])
    found = client.get(f"/sae/{SAE_ID}/", params={"q": "zinc"}).text
    assert rows(found) == [1]
    assert 'value="zinc"' in found  # the box keeps the search (the URL holds it)
    validated = client.get(f"/sae/{SAE_ID}/", params={"validated": "1"}).text
    assert 4 not in rows(validated) and 1 in rows(validated)


def test_search_text_is_literal(client):
    page = client.get(f"/sae/{SAE_ID}/", params={"q": '"zinc" AND ( <b>'}).text
    assert rows(page) == []
    assert "&lt;b&gt;" in page and "<b>" not in page


def test_feature_page_shows_the_viewer_page_with_examples_and_suggestions(client):
    page = client.get(f"/sae/{SAE_ID}/features/1").text
    assert "Zinc finger cysteine" in page and "Fires on cysteines" in page
    assert len(re.findall(r'<div class="example[ "]', page)) >= 3  # from the activation index
    assert "<circle " in page  # the scatter
    assert "Zinc finger:C2H2-type" in page  # its suggestion
    if not VIEWER_PAGE:  # serve adds the suggestions table (the viewer's own page draws its own)
        assert re.search(r'<tr class="suggestion"><td><a href="/sae/tiny/proteins/\w+">', page)
    assert 'href="/sae/tiny/features/2"' in page  # the next labeled feature, at serve's address
    assert 'href="../index.html"' not in page and 'href="/sae/tiny/"' in page
    assert f'<meta http-equiv="Content-Security-Policy" content="{SERVE_CSP}">' in page


def test_an_unlabeled_feature_says_how_to_label_it(client):
    response = client.get(f"/sae/{SAE_ID}/features/3")
    assert response.status_code == 200
    assert "has no label yet; run <code>plmlabel label tiny --features 3</code>" in response.text
    assert "fires on" in response.text


@pytest.mark.parametrize(("url", "status", "text"), [
    (f"/sae/{SAE_ID}/features/32", 404, "SAE &#x27;tiny&#x27; has features 0 to 31; there is no feature 32."),
    (f"/sae/{SAE_ID}/features/99999999999", 404, "is not a feature number"),
    (f"/sae/{SAE_ID}/features/-1", 404, "&#x27;-1&#x27; is not a feature number"),
    (f"/sae/{SAE_ID}/features/%3Cscript%3E", 404, "&#x27;&lt;script&gt;&#x27; is not a feature number"),
    ("/sae/nope/features/1", 404, "no SAE named &#x27;nope&#x27;"),
    ("/sae/nope/", 404, "no SAE named"),
    ("/elsewhere", 404, "There is no page at this address."),
])
def test_bad_addresses_are_a_message_page(client, url, status, text):
    response = client.get(url)
    assert response.status_code == status
    assert text in message(response.text)
    assert_no_markup_from(response.text)


def test_protein_page_lists_its_suggestions(client, live):
    with live.db() as db:
        accession = db.query("select accession from suggestions where feature = 1")[0]["accession"]
    page = client.get(f"/sae/{SAE_ID}/proteins/{accession}").text
    assert '<tr class="suggestion"><td><a href="/sae/tiny/features/1">1</a></td>' in page
    assert "3-9" in page and "0.90 / 0.70 / 0.79" in page
    assert f'href="/sae/tiny/analyze?text={accession}"' in page


# --- stored script payloads stay text ------------------------------------------------------------------
def test_a_payload_label_stays_text_everywhere(client, live):
    search = client.get(f"/sae/{SAE_ID}/", params={"q": "kinase"}).text
    assert rows(search) == [PAYLOAD_FEATURE]
    feature = client.get(f"/sae/{SAE_ID}/features/{PAYLOAD_FEATURE}").text
    with live.db() as db:
        accession = db.query("select accession from suggestions where feature = ?", (PAYLOAD_FEATURE,))[0]
    protein = client.get(f"/sae/{SAE_ID}/proteins/{accession['accession']}").text
    for page in (search, feature, protein):
        assert_no_markup_from(page)
        assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;" in page
    assert "&lt;/script&gt;&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in feature


# --- paste a sequence ----------------------------------------------------------------------------------
def test_paste_shows_the_features_that_fire_and_one_feature_per_residue(client):
    response = client.post(f"/sae/{SAE_ID}/analyze", data={"text": ">my protein <b>x</b>\n" + SEQUENCE})
    assert response.status_code == 200, response.text[-500:]
    page = response.text
    fired = rows(page, "fired")
    assert len(fired) >= 3
    assert "features fire on my protein &lt;b&gt;x&lt;/b&gt; (179 residues)" in page
    assert f"<h2 id=\"residues\">Feature {fired[0]} on each residue</h2>" in page
    assert re.search(r'<(span|b) [^>]*title="[A-Z]\d+: [0-9.e+-]+"', page)  # shaded residues
    second = client.get(f"/sae/{SAE_ID}/analyze", params={"text": SEQUENCE, "feature": str(fired[1])}).text
    assert f"Feature {fired[1]} on each residue" in second
    assert rows(second, "fired") == fired  # same sequence, same answer (cached)


def test_paste_by_accession_uses_the_workspace_protein(client, live):
    with live.db() as db:
        row = db.query("select accession, length from proteins order by accession limit 1")[0]
    page = client.get(f"/sae/{SAE_ID}/analyze", params={"text": row["accession"].lower()}).text
    assert f"on {row['accession']} ({row['length']} residues)" in page
    assert f'id="protein-link" href="/sae/tiny/proteins/{row["accession"]}"' in page


@pytest.mark.parametrize(("text", "status", "expected"), [
    ("M" * 10_000, 400, "the sequence has 10,000 residues; this server reads at most 2,000"),
    ("MKTAYIAKQR1 2 3 MKTJ", 400, "residue 14 is &#x27;J&#x27;, which is not an amino acid ESM-2 reads"),
    ("MKV<script>alert(1)</script>", 400, "residue 4 is &#x27;&lt;&#x27;"),
    ("MKV\x00\x01\x02", 400, "control characters or binary data"),
    ("   \n ", 400, "the paste holds no sequence"),
    ("Q9ZZZ9", 400, "Q9ZZZ9 looks like a UniProt accession but is not a protein of this workspace"),
])
def test_bad_pastes_are_a_clear_message(client, text, status, expected):
    response = client.post(f"/sae/{SAE_ID}/analyze", data={"text": text})
    assert response.status_code == status
    assert expected in message(response.text)
    assert_no_markup_from(response.text)
    assert client.get(f"/sae/{SAE_ID}/").status_code == 200  # still serving


def test_a_huge_or_binary_body_is_refused_before_it_is_read(client):
    huge = client.post(f"/sae/{SAE_ID}/analyze", content=b"text=" + b"A" * 200_000,
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413
    assert "this server reads at most 65,536" in message(huge.text)
    binary = client.post(f"/sae/{SAE_ID}/analyze", content=bytes(range(256)) * 4,
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert binary.status_code == 400 and "it is not text" in message(binary.text)
    upload = client.post(f"/sae/{SAE_ID}/analyze", files={"text": ("a.fasta", b">x\nMKV")})
    assert upload.status_code == 400 and "files cannot be uploaded here" in message(upload.text)
    encoded = client.post(f"/sae/{SAE_ID}/analyze", content=b"text=%ff%fe%00",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert encoded.status_code == 400 and "it is not text" in message(encoded.text)
    assert client.get(f"/sae/{SAE_ID}/features/1").status_code == 200


def test_a_feature_out_of_range_in_the_paste_url(client):
    response = client.get(f"/sae/{SAE_ID}/analyze", params={"text": SEQUENCE, "feature": "400"})
    assert response.status_code == 400
    assert "there is no feature 400" in message(response.text)


def test_an_unexpected_error_is_a_500_page_and_serving_goes_on(live, monkeypatch):
    app = create_app(live)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        monkeypatch.setattr("agent.serve.app.feature_view", lambda *a: 1 / 0)
        broken = test_client.get(f"/sae/{SAE_ID}/features/1")
        assert broken.status_code == 500 and "Something went wrong" in broken.text
        assert "ZeroDivisionError" not in broken.text
        assert test_client.get(f"/sae/{SAE_ID}/").status_code == 200


def test_an_unknown_host_is_refused(client):
    assert client.get(f"/sae/{SAE_ID}/", headers={"host": "evil.example"}).status_code == 400


# --- the checks, as functions -------------------------------------------------------------------------
def test_check_paste_reads_fasta_and_drops_numbers():
    paste = check_paste(">sp|P1|X first\n1 mkv ll\n11 AG\n>second\nWWW", Limits())
    assert paste.sequence == "MKVLLAG" and paste.name == "sp|P1|X first"
    with pytest.raises(PasteError, match="residue 3 is 'É'"):
        check_paste("MK\u00e9", Limits())


def test_parse_form_refuses_too_many_fields():
    with pytest.raises(PasteError):
        parse_form(b"&".join(b"a%d=1" % i for i in range(20)))


def test_an_unknown_protein_address_is_escaped(client):
    response = client.get(f"/sae/{SAE_ID}/proteins/%3Cimg%20src%3Dx%20id%3Dpwned%3E")
    assert response.status_code == 200
    assert "not in the workspace database" in response.text
    assert "&lt;img src=x id=pwned&gt;" in response.text
    assert "<img" not in response.text and "<script" not in response.text
