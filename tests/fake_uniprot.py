"""A local stand-in for rest.uniprot.org: `/uniprotkb/search` over real entries, cursor pages with a
`Link: <...>; rel="next"` header, and failures to inject (429 with Retry-After, 503, ...).

    with FakeUniProt(entries) as server:
        server.fail(429, retry_after="0")     # the next request gets this answer
        fetch_entries("*", base_url=server.base_url)
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


class FakeUniProt:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.requests: list[str] = []
        self._failures: deque[tuple[int, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, status: int, *, times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next `times` requests with `status` (and a Retry-After header if given)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._failures.extend([(status, headers)] * times)

    def __enter__(self) -> FakeUniProt:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the API -----------------------------------------------------------------------------------------
    def _matching(self, query: str) -> list[dict[str, Any]]:
        if query.strip() == "*":
            return self.entries
        if query.startswith("accession:"):
            wanted = query.split(":", 1)[1].strip()
            return [e for e in self.entries if e.get("primaryAccession") == wanted]
        needle = query.lower()
        return [e for e in self.entries if needle in json.dumps(e).lower()]

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.requests.append(path)
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            status, headers = failure
            return status, headers, json.dumps({"messages": [f"injected failure {status}"]}).encode()
        parts = urlsplit(path)
        if parts.path != "/uniprotkb/search":
            return 404, {}, json.dumps({"messages": ["no such resource"]}).encode()
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query = params.get("query", "")
        if not query or query.count("(") != query.count(")"):
            return 400, {}, json.dumps({"messages": [f"query parse error: {query!r}"]}).encode()
        size = int(params.get("size", "25"))
        start = int(params.get("cursor", "0"))
        matching = self._matching(query)
        page = matching[start:start + size]
        headers = {"Content-Type": "application/json", "X-Total-Results": str(len(matching))}
        if start + size < len(matching):
            following = urlencode({**params, "cursor": str(start + size)})
            headers["Link"] = f'<{self.base_url}/uniprotkb/search?{following}>; rel="next"'
        return 200, headers, json.dumps({"results": page}).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                status, headers, body = fake.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler
