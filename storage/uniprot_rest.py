"""Entries from the UniProt REST API (`/uniprotkb/search`, JSON, cursor pages via the `Link` header).

    fetch_entries("reviewed:true AND organism_id:9606", limit=100) -> Iterator[Protein | RecordError]

Transient failures (HTTP 429 and 5xx, timeouts, dropped connections) are retried with exponential
backoff and full jitter; a `Retry-After` header, when sent, sets the wait instead. A page is read whole
(at most `page_size` entries) before its entries are parsed, so a retried page never yields an entry
twice; memory is bounded by the page size, not the result size.

Built on urllib from the standard library: the httpx named in the plan is not installed in this
environment (anthropic/openai pull in `httpx2` instead), and a GET with a few headers needs no more.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from storage.errors import InputError, PlmlabelError
from storage.protein import Protein
from storage.uniprot_formats._common import RecordError, Where
from storage.uniprot_formats.jsonfile import iter_json_entries, protein_from_json

DEFAULT_BASE_URL = "https://rest.uniprot.org"
MAX_PAGE_SIZE = 500  # UniProt's ceiling for `size`
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_S = 300.0
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class UniProtFetchError(PlmlabelError):
    """UniProt could not be reached, or kept failing after every retry."""

    exit_code = 1


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def fetch_entries(query: str, *, limit: int | None = None, base_url: str = DEFAULT_BASE_URL,
                  page_size: int = MAX_PAGE_SIZE, timeout_s: float = 60.0, max_attempts: int = 6,
                  backoff_s: float = 1.0,
                  on_warning: Callable[[str], None] | None = None) -> Iterator[Protein | RecordError]:
    """Proteins (and RecordErrors for entries that cannot be read) matching a UniProtKB query."""
    if not query.strip():
        raise InputError("the UniProt query is empty.")
    if limit is not None and limit <= 0:
        return
    size = max(1, min(page_size, MAX_PAGE_SIZE, limit or MAX_PAGE_SIZE))
    url: str | None = f"{base_url.rstrip('/')}/uniprotkb/search?" + urlencode(
        {"query": query, "format": "json", "size": size})
    where = Where(f"UniProt query {query!r}", on_warning or _warn)
    fetched = 0
    while url:
        body, url = _get_page(url, timeout_s=timeout_s, max_attempts=max_attempts, backoff_s=backoff_s)
        for entry in iter_json_entries(io.StringIO(body), where):
            yield protein_from_json(entry, where)
            fetched += 1
            if limit is not None and fetched >= limit:
                return


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _get_page(url: str, *, timeout_s: float, max_attempts: int, backoff_s: float) -> tuple[str, str | None]:
    retrying = Retrying(stop=stop_after_attempt(max_attempts), wait=_wait(backoff_s),
                        retry=retry_if_exception_type(_Transient), reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                return _request(url, timeout_s)
    except _Transient as exc:
        raise UniProtFetchError(f"UniProt failed {max_attempts} times on {url} (last: {exc}).") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _wait(backoff_s: float) -> Callable[[RetryCallState], float]:
    jittered = wait_random_exponential(multiplier=backoff_s, max=60 * backoff_s)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Transient) and error.retry_after is not None:
            return error.retry_after
        return jittered(state)

    return wait


def _request(url: str, timeout_s: float) -> tuple[str, str | None]:
    request = Request(url, headers={"Accept": "application/json", "User-Agent": "plmlabel"})
    try:
        with urlopen(request, timeout=timeout_s) as response:
            body = response.read().decode("utf-8")
            return body, next_link(response.headers.get("Link"))
    except HTTPError as exc:
        if exc.code in RETRY_STATUSES:
            raise _Transient(f"HTTP {exc.code}", retry_after_seconds(exc.headers.get("Retry-After"))) from exc
        message = _error_message(exc)
        if 400 <= exc.code < 500:
            raise InputError(f"UniProt refused the request (HTTP {exc.code}): {message}") from exc
        raise UniProtFetchError(f"UniProt answered HTTP {exc.code}: {message}") from exc
    except (URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(str(getattr(exc, "reason", exc)) or type(exc).__name__) from exc


def next_link(header: str | None) -> str | None:
    """The rel="next" URL of a `Link` header, if any."""
    match = _NEXT_LINK.search(header or "")
    return match[1] if match else None


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) in seconds, capped at five minutes."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def _error_message(error: HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", errors="replace")
    except OSError:
        return error.reason or ""
    try:
        messages = json.loads(body).get("messages")
        if messages:
            return "; ".join(str(m) for m in messages)
    except (ValueError, AttributeError):
        pass
    return body.strip()[:200] or str(error.reason)
