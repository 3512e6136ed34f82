"""A local fake of the Anthropic Messages and OpenAI Chat Completions HTTP APIs, for the real SDKs.

Point `anthropic.AsyncAnthropic(base_url=fake.anthropic_url)` or
`openai.AsyncOpenAI(base_url=fake.openai_url)` at it: the SDK code runs unchanged over real HTTP.

Answers are derived from the prompt, so end-to-end correctness is testable:
- explain (tool / schema named "explanation"): among the example blocks, the concept (an annotation
  at the firing residues, or a keyword) found most often in strongly activating examples and least
  in silent ones becomes the label;
- simulate ("simulation"): each held-out protein whose metadata mentions one of the explanation's
  concepts is predicted high (9), the others low (0);
- per-residue pass ("residue_simulation"): in each sequence window, residues inside an overlapping
  annotation that mentions one of the explanation's concepts are predicted 9, the others 0.

Faults on demand, per request: `script` (a list of actions consumed in order, then "ok") or
`error_rate` with `errors` (drawn with a seeded RNG). Actions: "ok", "429" (with retry-after),
"500", "503", "529", "timeout" (sleeps `timeout_sleep` seconds, past the client's timeout, then
answers), "malformed_body" (HTTP 200 with truncated JSON), "bad_answer" (a well-formed response whose
answer violates the schema), "401", "401_echo" (a proxy's 401 whose body repeats the key it was sent).
`latency` delays every answer.

Tool use (the agent, `plmlabel label --agent`): a request whose tools include `commit_label` is a
turn of an agent conversation, answered by the scripted model of tests/fake_agent.py (Anthropic
`tool_use` blocks; OpenAI `tool_calls`), recorded with stage "agent"; `agent_script` makes it
misbehave. Prompt caching is accounted as the APIs do: Anthropic reads what `cache_control` marks
(tools, system, the marked user block) from cache after the first time; OpenAI the stable prefix.

Routes live in a table (`route(method, path_regex)`). Every request is recorded in `requests` (api,
path, stage, feature, action).

Batch APIs (Anthropic Message Batches; OpenAI Files + Batch), in the shapes the SDKs parse:
- Anthropic: POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET .../{id}/results (JSONL);
- OpenAI: POST /v1/files (multipart upload of the JSONL input), POST /v1/batches,
  GET /v1/batches/{id}, GET /v1/files/{id}/content (the output and error JSONL files).
Each line is answered when the batch is created, by the same functions as the synchronous calls
(so `script`/`error_rate` faults apply per line: "bad_answer" gives a malformed answer to repair, a
429/500 an errored line) and recorded with path "/v1/messages/batches" or "/v1/batches". A batch
reports "in progress" until it has been polled `batch_end_after` times (0: ended at once), never
while `hold_batches` is set; `end_batches()` ends them all now. `batch_script` (consumed per
batch) can make a whole batch "expire", "cancel" or (OpenAI) "fail" validation. `batches` holds
every batch created, so tests can assert that nothing was submitted twice.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from storage.protein import FEATURE_TYPES

ERROR_ACTIONS = ("429", "500", "529", "timeout", "malformed_body", "bad_answer")


@dataclass
class Recorded:
    api: str
    path: str
    stage: str | None
    feature: int | None
    action: str
    n_messages: int
    api_key: str | None
    body: dict = field(repr=False)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["FakeLLM", dict, dict[str, str], "re.Match[str]"], Reply]

_FEATURE_RE = re.compile(r"Feature #(\d+) of SAE ")
_EXAMPLE_RE = re.compile(r'<example [^>]*activation="(\d+)"[^>]*>(.*?)</example>', re.S)
_PROTEIN_RE = re.compile(r'<protein accession="([^"]+)">(.*?)</protein>', re.S)
_CONCEPTS_RE = re.compile(r"^concepts: (.*)$", re.M)
_POSITIONS_RE = re.compile(r"\s*\([^()]*\)$")
_NUMBER_SUFFIX_RE = re.compile(r"\s+\d+$")
_COUNT_RE = re.compile(r"\s+×\d+$")


# --- answers derived from the prompt -------------------------------------------------------------------
def _candidates(block: str) -> set[tuple[int, str]]:
    """(priority, concept) pairs mentioned in one example block.

    An annotation counts as itself and as its bare type ("Zinc finger C2H2-type" and "Zinc finger");
    on equal enrichment annotations at the firing residues outrank other annotations, which outrank
    keywords.
    """
    found: set[tuple[int, str]] = set()
    for line in block.splitlines():
        key, _, value = line.partition(": ")
        if key.endswith("annotations") or key.startswith("annotations"):
            priority = 2 if key.startswith("annotations at firing") else 1
            for item in value.split(" | "):
                item = _COUNT_RE.sub("", _POSITIONS_RE.sub("", item.strip()))
                item = _NUMBER_SUFFIX_RE.sub("", item)
                if not item or item.startswith("…"):
                    continue
                found.add((priority, item))
                for type_ in FEATURE_TYPES:
                    if item.startswith(type_):
                        found.add((priority, type_))
        elif key == "keywords":
            for kw in value.split("; "):
                if kw.strip():
                    found.add((0, "Keyword " + kw.strip()))
    return found


def derive_explanation(prompt: str) -> dict[str, Any]:
    """Name the concept most enriched among the strongly activating examples."""
    active: Counter[tuple[int, str]] = Counter()
    silent: Counter[tuple[int, str]] = Counter()
    n_active = n_silent = 0
    for activation, block in _EXAMPLE_RE.findall(prompt):
        level = int(activation)
        if level >= 5:
            n_active += 1
            active.update(_candidates(block))
        elif level == 0:
            n_silent += 1
            silent.update(_candidates(block))
    if not active:
        return {"label": "Unclear feature", "description": "No shared concept.", "concepts": [],
                "confidence": 0.0}

    def enrichment(item: tuple[int, str]) -> tuple[float, int, int, str]:
        return (active[item] / max(n_active, 1) - silent[item] / max(n_silent, 1), item[0], len(item[1]),
                item[1])

    best = max(active, key=enrichment)
    concept = best[1]
    label = " ".join(concept.split()[:8])
    return {
        "label": label,
        "description": f"Fires on proteins annotated with {concept}; silent elsewhere.",
        "concepts": [concept],
        "confidence": round(min(1.0, max(0.0, enrichment(best)[0])), 2),
    }


def _needle(concept: str) -> str:
    return concept.strip().removeprefix("Keyword ").removeprefix("Organism ").lower()


def derive_simulation(prompt: str) -> dict[str, float]:
    """High for held-out proteins whose metadata mentions an explanation concept, low otherwise.

    A concept "A AND B" needs both in the same protein; "A OR B" either."""
    match = _CONCEPTS_RE.search(prompt)
    concepts = [c.strip() for c in match.group(1).split(";")] if match else []
    needles: list[list[str]] = []  # any group, all of its needles
    for concept in (c for c in concepts if c.strip()):
        if " AND " in concept:
            needles.append([_needle(part) for part in concept.split(" AND ")])
        else:
            needles += [[_needle(part)] for part in concept.split(" OR ")]
    answer = {}
    for accession, block in _PROTEIN_RE.findall(prompt):
        text = block.lower()
        answer[accession] = 9.0 if any(all(n in text for n in group) for group in needles) else 0.0
    return answer


_WINDOW_RE = re.compile(r'<window key="([^"]+)">(.*?)</window>', re.S)
_WINDOW_START_RE = re.compile(r"^positions: (\d+)-(\d+)", re.M)
_WINDOW_ANNOTATIONS_RE = re.compile(r"^annotations overlapping the window: (.*)$", re.M)
_ANNOTATION_RE = re.compile(r"([^;()]+)\(([\d, -]+)\)")


def derive_residues(prompt: str) -> dict[str, list[float]]:
    """9 on residues an overlapping annotation naming an explanation concept covers, 0 elsewhere."""
    match = _CONCEPTS_RE.search(prompt)
    concepts = [c.strip() for c in match.group(1).split(";")] if match else []
    needles = [c.removeprefix("Keyword ").lower() for c in concepts if c.strip()]
    answer: dict[str, list[float]] = {}
    for key, block in _WINDOW_RE.findall(prompt):
        start, end = map(int, _WINDOW_START_RE.search(block).groups())
        covered: set[int] = set()
        annotations = _WINDOW_ANNOTATIONS_RE.search(block)
        for name, where in _ANNOTATION_RE.findall(annotations.group(1) if annotations else ""):
            if not any(n and (n in name.lower() or name.lower().strip() in n) for n in needles):
                continue
            if "-" in where:
                a, b = (int(x) for x in where.split("-"))
                covered |= set(range(a, b + 1))
            else:
                covered |= {int(x) for x in where.split(",")}
        answer[key] = [9.0 if p in covered else 0.0 for p in range(start, end + 1)]
    return answer


def _spoil(stage: str | None, answer: dict[str, Any]) -> dict[str, Any]:
    """A schema-violating version of a good answer."""
    if stage == "simulation" and answer:
        spoiled = dict(answer)
        spoiled.pop(next(iter(spoiled)))
        spoiled["NOT_AN_ACCESSION"] = 5.0
        return spoiled
    return {"label": "this label is far too long to be a short label of eight words", "description": 3}


# --- the server ---------------------------------------------------------------------------------------
class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {"_raw": raw}  # not JSON (a multipart file upload): handlers read the bytes
        path = self.path.split("?", 1)[0]
        for route_method, pattern, handler in fake.routes:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                with fake.counting_in_flight():
                    reply = handler(fake, body, dict(self.headers.items()), match)
                break
        else:
            reply = Reply(404, json.dumps({"error": {"message": f"no route {method} {path}"}}).encode())
        try:
            self.send_response(reply.status)
            headers = {"content-type": "application/json", **reply.headers}
            headers["content-length"] = str(len(reply.body))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a timeout, a killed process) is part of the tests, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLM:
    def __init__(
        self,
        *,
        seed: int = 0,
        error_rate: float = 0.0,
        errors: tuple[str, ...] = ERROR_ACTIONS,
        script: list[str] | None = None,
        latency: float = 0.0,
        timeout_sleep: float = 1.0,
        retry_after: str = "0",
    ) -> None:
        self.error_rate = error_rate
        self.errors = errors
        self.script = list(script or [])
        self.latency = latency
        self.timeout_sleep = timeout_sleep
        self.retry_after = retry_after
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # the most requests it was answering at once
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._seen_systems: set[str] = set()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.route("POST", "/v1/messages", _anthropic_messages)
        self.route("POST", "/v1/chat/completions", _openai_chat)
        self.batches: dict[str, FakeBatch] = {}
        self.files: dict[str, bytes] = {}
        self.batch_end_after = 1
        self.hold_batches = False
        self.batch_script: list[str] = []
        self.agent_script: list[str] = []  # the scripted agent's behaviour per turn (tests/fake_agent.py)
        self.route("POST", "/v1/messages/batches", _anthropic_batch_create)
        self.route("GET", "/v1/messages/batches/(?P<id>[^/]+)", _anthropic_batch_get)
        self.route("GET", "/v1/messages/batches/(?P<id>[^/]+)/results", _anthropic_batch_results)
        self.route("POST", "/v1/files", _openai_file_upload)
        self.route("GET", "/v1/files/(?P<id>[^/]+)/content", _openai_file_content)
        self.route("POST", "/v1/batches", _openai_batch_create)
        self.route("GET", "/v1/batches/(?P<id>[^/]+)", _openai_batch_get)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- set-up -------------------------------------------------------------------------------------
    def route(self, method: str, path_regex: str, handler: Handler) -> None:
        """Add an endpoint; later routes win over earlier ones with the same pattern."""
        self.routes.insert(0, (method, re.compile(path_regex), handler))

    def start(self) -> FakeLLM:
        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def anthropic_url(self) -> str:
        return self.url

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    # --- bookkeeping ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def counting_in_flight(self) -> Iterator[None]:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def next_action(self) -> str:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.error_rate and self._rng.random() < self.error_rate:
                return self._rng.choice(self.errors)
            return "ok"

    def record(self, item: Recorded) -> None:
        with self._lock:
            self.requests.append(item)

    def cache_hit(self, system: str) -> bool:
        """Whether this system block was seen before (a prompt-cache read) or not (a write)."""
        with self._lock:
            hit = system in self._seen_systems
            self._seen_systems.add(system)
            return hit

    def features_requested(self, stage: str | None = None) -> Counter[int]:
        with self._lock:
            return Counter(r.feature for r in self.requests
                           if r.feature is not None and (stage is None or r.stage == stage))

    def count(self, action: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if action is None or r.action == action)

    # --- batches ------------------------------------------------------------------------------------
    def end_batches(self) -> None:
        """End every batch now (the next poll sees it ended), even while `hold_batches` is set."""
        with self._lock:
            for batch in self.batches.values():
                batch.ended = True

    def batch_count(self, api: str | None = None, stage: str | None = None) -> int:
        with self._lock:
            return sum(1 for b in self.batches.values()
                       if (api is None or b.api == api) and (stage is None or b.stage == stage))

    def _new_batch(self, api: str, prefix: str, results: dict[str, Reply], stage: str | None) -> FakeBatch:
        with self._lock:
            outcome = self.batch_script.pop(0) if self.batch_script else "ok"
            batch = FakeBatch(id=f"{prefix}{uuid.uuid4().hex[:16]}", api=api, stage=stage, results=results,
                              outcome=outcome, created_at=time.time(), ended=self.batch_end_after <= 0
                              and not self.hold_batches)
            self.batches[batch.id] = batch
            return batch

    def _poll(self, batch: FakeBatch) -> bool:
        with self._lock:
            batch.polls += 1
            if not batch.ended and not self.hold_batches and batch.polls >= self.batch_end_after:
                batch.ended = True
            return batch.ended


def _fault(fake: FakeLLM, action: str, api: str, key: str | None = None) -> Reply | None:
    """The reply for an injected fault, or None when the request should be answered."""
    if action == "401_echo":  # a proxy that repeats the credential it rejected
        error = {"message": f"proxy: key {key} is not allowed here", "type": "authentication_error"}
        body = {"type": "error", "error": error} if api == "anthropic" else {"error": error}
        return Reply(401, json.dumps(body).encode())
    if action == "timeout":
        time.sleep(fake.timeout_sleep)
        return None
    statuses = {"429": 429, "500": 500, "503": 503, "529": 529, "401": 401}
    if action in statuses:
        status = statuses[action]
        kind = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error"}.get(
            status, "api_error")
        if api == "anthropic":
            body = {"type": "error", "error": {"type": kind, "message": f"injected {status}"}}
        else:
            body = {"error": {"message": f"injected {status}", "type": kind, "code": None}}
        headers = {"retry-after": fake.retry_after} if status == 429 else {}
        return Reply(status, json.dumps(body).encode(), headers)
    if action == "malformed_body":
        return Reply(200, b'{"id": "msg_0", "type": "message", "content": [{"type": "tool_u')
    return None


def _derive(stage: str | None, prompt: str) -> dict[str, Any]:
    if stage == "explanation":
        return derive_explanation(prompt)
    if stage == "simulation":
        return derive_simulation(prompt)
    if stage == "residue_simulation":
        return derive_residues(prompt)
    return {}


def _first_user_text(messages: list[dict]) -> str:
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return ""


def _error(status: int, message: str) -> Reply:
    return Reply(status, json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                                 "message": message}}).encode())


def _stage_from_prompt(prompt: str) -> str | None:
    if "<example " in prompt:
        return "explanation"
    if "<protein accession=" in prompt:
        return "simulation"
    if "<window key=" in prompt:
        return "residue_simulation"
    return None


def _anthropic_key(headers: dict[str, str]) -> str | None:
    lower = {k.lower(): v for k, v in headers.items()}
    return lower.get("x-api-key") or lower.get("authorization", "").removeprefix("Bearer ") or None


def _anthropic_messages(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    return _anthropic_answer(fake, body, _anthropic_key(headers), "/v1/messages")


def _is_agent(body: dict) -> bool:
    """A tool conversation of the agent (its tools include commit_label), in either API."""
    names = {t.get("name") or (t.get("function") or {}).get("name") for t in body.get("tools") or []}
    return "commit_label" in names


def _agent_answer(fake: FakeLLM, body: dict, key: str | None, path: str, api: str) -> Reply:
    """One turn of the scripted agent (tests/fake_agent.py), with prompt-cache accounting."""
    from tests import fake_agent

    messages = body.get("messages", [])
    first, _, _ = fake_agent.transcript(messages, api)
    feature = _FEATURE_RE.search(first)
    action = fake.next_action()
    fake.record(Recorded(api, path, "agent", int(feature.group(1)) if feature else None, action,
                         len(messages), key, body))
    if not key and api == "anthropic":
        return _error(401, "no API key (x-api-key or authorization)")
    if (reply := _fault(fake, action, api, key)) is not None:
        return reply
    with fake._lock:
        behaviour = fake.agent_script.pop(0) if fake.agent_script else "normal"
    tools_text = json.dumps(body.get("tools"))
    if api == "anthropic":
        system = "".join(b.get("text", "") for b in body.get("system") or [])
        blocks = [b for m in messages if m.get("role") == "user" and isinstance(m.get("content"), list)
                  for b in m["content"]]
        marked = [b for b in blocks if b.get("cache_control") == {"type": "ephemeral"}]
        prefix = tools_text + system + "".join(b.get("text", "") for b in marked)
        cached = len(prefix) // 4
        hit = fake.cache_hit(prefix)
        sent = sum(len(json.dumps(m.get("content"))) for m in messages)
        total = (len(tools_text) + len(system) + sent) // 4
        usage = {"input_tokens": max(1, total - cached), "output_tokens": 60,
                 "cache_creation_input_tokens": 0 if hit else cached,
                 "cache_read_input_tokens": cached if hit else 0}
        return Reply(200, json.dumps(fake_agent.anthropic_message(body, behaviour, usage)).encode())
    system = "".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    prefix = tools_text + system + first
    hit = fake.cache_hit(prefix)
    prompt_tokens = (len(tools_text) + sum(len(str(m.get("content", ""))) for m in messages)) // 4
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 60, "total_tokens": prompt_tokens + 60,
             "prompt_tokens_details": {"cached_tokens": len(prefix) // 4 if hit else 0}}
    return Reply(200, json.dumps(fake_agent.openai_completion(body, behaviour, usage)).encode())


def _anthropic_answer(fake: FakeLLM, body: dict, key: str | None, path: str) -> Reply:
    """Structured output by forced tool use (`tools` + `tool_choice`) or by `output_config.format`.

    Also answers each line of a batch (`path` says which, in `requests`)."""
    if _is_agent(body):
        return _agent_answer(fake, body, key, path, "anthropic")
    tools = body.get("tools") or []
    prompt = _first_user_text(body.get("messages", []))
    if "<protein accession=" not in prompt:  # the agent's trials list their proteins in the system block
        prompt += "\n" + "".join(b.get("text", "") for b in body.get("system") or [] if isinstance(b, dict))
    output_format = (body.get("output_config") or {}).get("format")
    stage = tools[0]["name"] if tools else _stage_from_prompt(prompt)
    feature = _FEATURE_RE.search(prompt)
    action = fake.next_action()
    fake.record(Recorded("anthropic", path, stage, int(feature.group(1)) if feature else None,
                         action, len(body.get("messages", [])), key, body))
    if fake.latency:
        time.sleep(fake.latency)
    if not key:
        return _error(401, "no API key (x-api-key or authorization)")
    if tools and body.get("tool_choice", {}).get("name") != stage:
        return _error(400, "tool_choice must force the one tool")
    if not tools and (not output_format or output_format.get("type") != "json_schema"
                      or output_format["schema"].get("additionalProperties") is not False):
        return _error(400, "expected output_config.format with a closed json_schema")
    if (reply := _fault(fake, action, "anthropic", key)) is not None:
        return reply
    system_blocks = body.get("system") or []
    system = "".join(b.get("text", "") for b in system_blocks)
    cached = bool(system_blocks) and system_blocks[-1].get("cache_control") == {"type": "ephemeral"}
    answer = _derive(stage, prompt)
    if action == "bad_answer":
        answer = _spoil(stage, answer)
    hit = fake.cache_hit(system) if cached else False
    system_tokens = len(system) // 4
    user_tokens = sum(len(json.dumps(m.get("content"))) for m in body.get("messages", [])) // 4
    usage = {
        "input_tokens": user_tokens + (0 if cached else system_tokens),
        "output_tokens": max(1, len(json.dumps(answer)) // 4),
        "cache_creation_input_tokens": system_tokens if cached and not hit else 0,
        "cache_read_input_tokens": system_tokens if cached and hit else 0,
    }
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "unknown"),
        "content": (
            [{"type": "tool_use", "id": "toolu_fake", "name": stage, "input": answer}] if tools else
            [{"type": "thinking", "thinking": "Looking at the examples.", "signature": "sig"},
             {"type": "text", "text": json.dumps(answer)}]
        ),
        "stop_reason": "tool_use" if tools else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    return Reply(200, json.dumps(message).encode())


def _openai_key(headers: dict[str, str]) -> str | None:
    lower = {k.lower(): v for k, v in headers.items()}
    return lower.get("authorization", "").removeprefix("Bearer ") or None


def _openai_chat(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    return _openai_answer(fake, body, _openai_key(headers), "/v1/chat/completions")


def _openai_answer(fake: FakeLLM, body: dict, key: str | None, path: str) -> Reply:
    """A chat completion; also answers each line of a batch (`path` says which, in `requests`)."""
    if _is_agent(body):
        return _agent_answer(fake, body, key, path, "openai")
    response_format = body.get("response_format") or {}
    schema = response_format.get("json_schema") or {}
    stage = schema.get("name")
    messages = body.get("messages", [])
    prompt = _first_user_text(messages)
    if stage == "simulation" and "<protein accession=" not in prompt:  # the agent's trials: in the system
        prompt += "\n" + "".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    feature = _FEATURE_RE.search(prompt)
    action = fake.next_action()
    fake.record(Recorded("openai", path, stage, int(feature.group(1)) if feature else None,
                         action, len(messages), key, body))
    if fake.latency:
        time.sleep(fake.latency)
    if response_format.get("type") != "json_schema" or schema.get("strict") is not True:
        return Reply(400, json.dumps({"error": {"message": "json_schema strict expected"}}).encode())
    if (reply := _fault(fake, action, "openai", key)) is not None:
        return reply
    answer = _derive(stage, prompt)
    content = json.dumps(_spoil(stage, answer) if action == "bad_answer" else answer)
    system = "".join(m.get("content", "") for m in messages if m.get("role") == "system")
    hit = fake.cache_hit(system)
    prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4
    completion = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "unknown"),
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max(1, len(content) // 4),
            "total_tokens": prompt_tokens + max(1, len(content) // 4),
            "prompt_tokens_details": {"cached_tokens": len(system) // 4 if hit else 0},
        },
    }
    return Reply(200, json.dumps(completion).encode())


# --- batch APIs ---------------------------------------------------------------------------------------
@dataclass
class FakeBatch:
    id: str
    api: str
    stage: str | None
    results: dict[str, Reply]  # custom_id -> the answer its request got (computed at creation)
    outcome: str  # "ok", "expire", "cancel", "fail"
    created_at: float
    ended: bool = False
    polls: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    input_file_id: str = ""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _json(status: int, data: Any) -> Reply:
    return Reply(status, json.dumps(data).encode())


def _batch_stage(fake: FakeLLM, first: int) -> str | None:
    """The stage of the lines just answered (requests recorded since index `first`), if they share one."""
    with fake._lock:
        stages = {r.stage for r in fake.requests[first:]}
    return stages.pop() if len(stages) == 1 else None


_CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _anthropic_batch_create(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    key = _anthropic_key(headers)
    if not key:
        return _error(401, "no API key (x-api-key or authorization)")
    requests = body.get("requests") or []
    ids = [r.get("custom_id", "") for r in requests]
    if not requests or len(set(ids)) != len(ids) or not all(_CUSTOM_ID_RE.match(i) for i in ids):
        return _error(400, "requests must be non-empty with unique custom_ids matching ^[a-zA-Z0-9_-]{1,64}$")
    first = len(fake.requests)
    results = {r["custom_id"]: _anthropic_answer(fake, r["params"], key, "/v1/messages/batches")
               for r in requests}
    batch = fake._new_batch("anthropic", "msgbatch_", results, _batch_stage(fake, first))
    return _json(200, _anthropic_batch_body(fake, batch))


def _anthropic_batch_body(fake: FakeLLM, batch: FakeBatch) -> dict[str, Any]:
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if batch.ended:
        for reply in batch.results.values():
            counts[_anthropic_line(batch, reply)["type"]] += 1
    else:
        counts["processing"] = len(batch.results)
    return {
        "id": batch.id, "type": "message_batch",
        "processing_status": "ended" if batch.ended else "in_progress",
        "request_counts": counts,
        "created_at": _iso(batch.created_at), "expires_at": _iso(batch.created_at + 86400),
        "ended_at": _iso(time.time()) if batch.ended else None, "archived_at": None,
        "cancel_initiated_at": _iso(batch.created_at) if batch.outcome == "cancel" else None,
        "results_url": f"{fake.url}/v1/messages/batches/{batch.id}/results" if batch.ended else None,
    }


def _anthropic_line(batch: FakeBatch, reply: Reply) -> dict[str, Any]:
    """One request's result, as the results file gives it."""
    if batch.outcome == "expire":
        return {"type": "expired"}
    if batch.outcome == "cancel":
        return {"type": "canceled"}
    try:
        data = json.loads(reply.body)
    except json.JSONDecodeError:
        data = None
    if reply.status == 200 and data is not None:
        return {"type": "succeeded", "message": data}
    if data is None or data.get("type") != "error":
        data = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    return {"type": "errored", "error": {**data, "request_id": None}}


def _anthropic_batch_get(fake: FakeLLM, body: dict, headers: dict[str, str], match: re.Match[str]) -> Reply:
    batch = fake.batches.get(match.group("id"))
    if batch is None or batch.api != "anthropic":
        return Reply(404, json.dumps({"type": "error", "error": {"type": "not_found_error",
                                                                  "message": "batch not found"}}).encode())
    fake._poll(batch)
    return _json(200, _anthropic_batch_body(fake, batch))


def _anthropic_batch_results(fake: FakeLLM, body: dict, headers: dict[str, str],
                             match: re.Match[str]) -> Reply:
    batch = fake.batches.get(match.group("id"))
    if batch is None or not batch.ended:
        return _error(404, "no results (unknown batch, or not ended)")
    lines = [json.dumps({"custom_id": cid, "result": _anthropic_line(batch, reply)})
             for cid, reply in batch.results.items()]
    return Reply(200, ("\n".join(lines) + "\n").encode(), {"content-type": "application/binary"})


def _openai_error(status: int, message: str) -> Reply:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})


def _openai_file_upload(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    lower = {k.lower(): v for k, v in headers.items()}
    raw = body.get("_raw", b"")
    form = BytesParser(policy=HTTP).parsebytes(
        b"content-type: " + lower.get("content-type", "").encode() + b"\r\n\r\n" + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in form.iter_parts() if form.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
        return _openai_error(400, "expected a multipart upload with file and purpose=batch")
    filename, content = fields["file"]
    file_id = f"file-{uuid.uuid4().hex[:20]}"
    fake.files[file_id] = content
    return _json(200, _file_body(file_id, filename or "upload.jsonl", len(content), "batch"))


def _file_body(file_id: str, filename: str, size: int, purpose: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed"}


def _openai_file_content(fake: FakeLLM, body: dict, headers: dict[str, str], match: re.Match[str]) -> Reply:
    content = fake.files.get(match.group("id"))
    if content is None:
        return _openai_error(404, "no such file")
    return Reply(200, content, {"content-type": "application/octet-stream"})


def _openai_batch_create(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    key = _openai_key(headers)
    content = fake.files.get(body.get("input_file_id", ""))
    if content is None:
        return _openai_error(400, "unknown input_file_id")
    if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
        return _openai_error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
    lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
    ids = [line.get("custom_id") for line in lines]
    if (not lines or len(set(ids)) != len(ids)
            or any(x.get("method") != "POST" or x.get("url") != body["endpoint"] for x in lines)):
        return _openai_error(400, "each line needs a unique custom_id, method POST and the batch's url")
    first = len(fake.requests)
    results = {x["custom_id"]: _openai_answer(fake, x["body"], key, "/v1/batches") for x in lines}
    batch = fake._new_batch("openai", "batch_", results, _batch_stage(fake, first))
    batch.input_file_id = body["input_file_id"]
    return _json(200, _openai_batch_body(fake, batch))


_OPENAI_END = {"ok": "completed", "expire": "expired", "cancel": "cancelled", "fail": "failed"}


def _openai_batch_body(fake: FakeLLM, batch: FakeBatch) -> dict[str, Any]:
    status = _OPENAI_END[batch.outcome] if batch.ended else "in_progress"
    if batch.ended and batch.output_file_id is None and batch.error_file_id is None and status != "failed":
        _openai_write_outputs(fake, batch)
    ok = sum(1 for r in batch.results.values() if r.status == 200) if status == "completed" else 0
    created = int(batch.created_at)
    done = int(time.time()) if batch.ended else None
    return {
        "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
        "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
        "created_at": created, "in_progress_at": created, "expires_at": created + 86400,
        "completed_at": done if status == "completed" else None,
        "expired_at": done if status == "expired" else None,
        "cancelled_at": done if status == "cancelled" else None,
        "failed_at": done if status == "failed" else None,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "errors": ({"object": "list", "data": [{"code": "invalid_request", "line": 1, "param": None,
                                               "message": "injected validation failure"}]}
                   if status == "failed" else None),
        "request_counts": {"total": len(batch.results), "completed": ok,
                           "failed": len(batch.results) - ok if batch.ended else 0},
        "metadata": None,
    }


def _openai_write_outputs(fake: FakeLLM, batch: FakeBatch) -> None:
    """The output file (answered lines) and error file (failed or never-run lines) of an ended batch."""
    out, err = [], []
    for n, (cid, reply) in enumerate(batch.results.items()):
        line: dict[str, Any] = {"id": f"batch_req_{batch.id}_{n}", "custom_id": cid}
        if batch.outcome in ("expire", "cancel"):
            code = "batch_expired" if batch.outcome == "expire" else "batch_cancelled"
            err.append({**line, "response": None,
                        "error": {"code": code, "message": f"This request was not executed ({code})."}})
            continue
        try:
            data = json.loads(reply.body)
        except json.JSONDecodeError:
            data = {"error": {"message": "malformed", "type": "server_error"}}
        line["response"] = {"status_code": reply.status, "request_id": f"req_{n}", "body": data}
        line["error"] = None
        (out if reply.status == 200 else err).append(line)
    for rows, attr in ((out, "output_file_id"), (err, "error_file_id")):
        if rows:
            file_id = f"file-{uuid.uuid4().hex[:20]}"
            fake.files[file_id] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
            setattr(batch, attr, file_id)


def _openai_batch_get(fake: FakeLLM, body: dict, headers: dict[str, str], match: re.Match[str]) -> Reply:
    batch = fake.batches.get(match.group("id"))
    if batch is None or batch.api != "openai":
        return _openai_error(404, "no such batch")
    fake._poll(batch)
    return _json(200, _openai_batch_body(fake, batch))
