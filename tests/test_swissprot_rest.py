"""Fetching from the UniProt REST API, against a local fake server that serves real entries."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from storage.errors import InputError
from storage.protein import Protein
from storage.proteins import import_proteins, protein_stats
from storage.swissprot import parse_file
from storage.uniprot_rest import UniProtFetchError, fetch_entries, next_link, retry_after_seconds
from tests.fake_uniprot import FakeUniProt


@pytest.fixture
def entries(swissprot_dir) -> list[dict]:
    return json.loads((swissprot_dir / "sprot_sample.json").read_text())["results"]


@pytest.fixture
def server(entries):
    with FakeUniProt(entries) as fake:
        yield fake


def _fetch(server, query="*", **kwargs):
    kwargs.setdefault("backoff_s", 0.001)
    return list(fetch_entries(query, base_url=server.base_url, **kwargs))


def test_pages_are_followed_through_the_link_header(server, swissprot_dir):
    fetched = _fetch(server, page_size=3)
    from_file = list(parse_file(swissprot_dir / "sprot_sample.json"))
    assert fetched == from_file  # same entries, same parse, in order
    assert len(server.requests) == 3  # 3 + 3 + 2
    assert all("size=3" in r and "format=json" in r for r in server.requests)
    assert "cursor=3" in server.requests[1] and "cursor=6" in server.requests[2]


def test_limit_stops_early(server):
    fetched = _fetch(server, limit=4, page_size=3)
    assert [p.accession for p in fetched] == ["A0A1B0GVB3", "A2A368", "A6NGA9", "A6NM36"]
    assert len(server.requests) == 2
    assert [p.accession for p in _fetch(server, "accession:A6NM36")] == ["A6NM36"]


def test_429_and_503_are_retried_honouring_retry_after(server):
    server.fail(429, retry_after="0")
    server.fail(503, times=2)
    started = time.monotonic()
    fetched = _fetch(server, page_size=5)
    assert len(fetched) == 8 and all(isinstance(p, Protein) for p in fetched)
    assert len(server.requests) == 3 + 2  # three failures, then two pages
    assert time.monotonic() - started < 5


def test_retry_after_sets_the_wait(server):
    server.fail(429, retry_after="1")
    started = time.monotonic()
    _fetch(server, limit=1)
    assert time.monotonic() - started >= 0.9


def test_retries_give_up_with_one_clear_error(server):
    server.fail(503, times=10)
    with pytest.raises(UniProtFetchError, match=r"UniProt failed 3 times on http://127\.0\.0\.1:\d+/uniprotkb/"
                                                r"search\?query=%2A.*\(last: HTTP 503\)"):
        _fetch(server, max_attempts=3)
    assert len(server.requests) == 3


def test_a_bad_query_is_an_input_error_with_uniprot_s_message(server):
    with pytest.raises(InputError, match=r"HTTP 400\): query parse error"):
        _fetch(server, "gene:(TP53")
    assert len(server.requests) == 1  # not retried


def test_unreachable_server_is_retried_then_reported():
    with pytest.raises(UniProtFetchError, match="failed 2 times"):
        list(fetch_entries("*", base_url="http://127.0.0.1:9", max_attempts=2, backoff_s=0.001, timeout_s=2))


def test_header_helpers():
    header = '<https://rest.uniprot.org/uniprotkb/search?cursor=abc&size=500>; rel="next"'
    assert next_link(header) == "https://rest.uniprot.org/uniprotkb/search?cursor=abc&size=500"
    assert next_link(None) is None and next_link('<x>; rel="prev"') is None
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("99999") == 300.0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_seconds(soon) <= 30
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_fetch_command_imports_into_the_workspace(server, workspace, cli):
    server.fail(429, retry_after="0")
    args = ("swissprot", "fetch", "--query", "*", "--limit", "5", "--base-url", server.base_url,
            "--workspace", workspace.root, "--json")
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"imported": 5, "updated": 0, "unchanged": 0, "total": 5, "skipped": 0}
    again = cli(*args)
    assert again.json() == {"imported": 0, "updated": 0, "unchanged": 5, "total": 5, "skipped": 0}
    shown = cli("swissprot", "show", "A2A368", "--workspace", workspace.root, "--json").json()
    assert shown["entry_name"] == "MAGBG_HUMAN"


def test_a_failure_part_way_changes_nothing(server, workspace):
    """The first page arrives and is written, then the second keeps failing: all is rolled back."""
    original = server.answer

    def first_page_only(path: str):
        if "cursor=" in path:
            server.requests.append(path)
            return 503, {"Retry-After": "0"}, b"{}"
        return original(path)

    server.answer = first_page_only  # type: ignore[method-assign]
    with workspace.db() as db:
        with pytest.raises(UniProtFetchError, match="last: HTTP 503"):
            import_proteins(db, fetch_entries("*", base_url=server.base_url, page_size=3, max_attempts=2))
        assert protein_stats(db)["proteins"] == 0
    assert len(server.requests) == 3  # one page, then two attempts at the second


def test_fetch_command_failure(server, workspace, cli):
    server.fail(503, times=6, retry_after="0")
    result = cli("swissprot", "fetch", "--query", "*", "--base-url", server.base_url,
                 "--workspace", workspace.root)
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: UniProt failed 6 times on {server.base_url}/uniprotkb/search?query=%2A&format=json&size=500 "
        "(last: HTTP 503)."]
