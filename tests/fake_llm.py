"""A local fake of the Anthropic Messages and OpenAI Chat Completions HTTP APIs, for the real SDKs.

Point `anthropic.AsyncAnthropic(base_url=fake.anthropic_url)` or
`openai.AsyncOpenAI(base_url=fake.openai_url)` at it: the SDK code runs unchanged over real HTTP.

Answers are derived from the prompt, so end-to-end correctness is testable:
- explain (tool / schema named "explanation"): among the example blocks, the concept (an annotation
  at the firing residues, or a keyword) found most often in strongly activating examples and least
  in silent ones becomes the label;
- simulate ("simulation"): each held-out protein whose metadata mentions one of the explanation's
  concepts is predicted high (9), the others low (0).

Faults on demand, per request: `script` (a list of actions consumed in order, then "ok") or
`error_rate` with `errors` (drawn with a seeded RNG). Actions: "ok", "429" (with retry-after),
"500", "503", "529", "timeout" (sleeps `timeout_sleep` seconds, past the client's timeout, then
answers), "malformed_body" (HTTP 200 with truncated JSON), "bad_answer" (a well-formed response whose
answer violates the schema), "401". `latency` delays every answer.

Routes live in a table (`route(method, path_regex)`), so more endpoints (batch APIs) can be added.
Every request is recorded in `requests` (api, stage, feature, action).
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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


def derive_simulation(prompt: str) -> dict[str, float]:
    """High for held-out proteins whose metadata mentions an explanation concept, low otherwise."""
    match = _CONCEPTS_RE.search(prompt)
    concepts = [c.strip() for c in match.group(1).split(";")] if match else []
    needles = [c.removeprefix("Keyword ").lower() for c in concepts if c.strip()]
    answer = {}
    for accession, block in _PROTEIN_RE.findall(prompt):
        text = block.lower()
        answer[accession] = 9.0 if any(n in text for n in needles) else 0.0
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
        except json.JSONDecodeError:
            body = {}
        path = self.path.split("?", 1)[0]
        for route_method, pattern, handler in fake.routes:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                reply = handler(fake, body, dict(self.headers.items()), match)
                break
        else:
            reply = Reply(404, json.dumps({"error": {"message": f"no route {method} {path}"}}).encode())
        try:
            self.send_response(reply.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply.body)))
            for key, value in reply.headers.items():
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
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._seen_systems: set[str] = set()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.route("POST", "/v1/messages", _anthropic_messages)
        self.route("POST", "/v1/chat/completions", _openai_chat)
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


def _fault(fake: FakeLLM, action: str, api: str) -> Reply | None:
    """The reply for an injected fault, or None when the request should be answered."""
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
    return None


def _anthropic_messages(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    """Structured output by forced tool use (`tools` + `tool_choice`) or by `output_config.format`."""
    lower = {k.lower(): v for k, v in headers.items()}
    tools = body.get("tools") or []
    prompt = _first_user_text(body.get("messages", []))
    output_format = (body.get("output_config") or {}).get("format")
    stage = tools[0]["name"] if tools else _stage_from_prompt(prompt)
    feature = _FEATURE_RE.search(prompt)
    action = fake.next_action()
    key = lower.get("x-api-key") or lower.get("authorization", "").removeprefix("Bearer ") or None
    fake.record(Recorded("anthropic", "/v1/messages", stage, int(feature.group(1)) if feature else None,
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
    if (reply := _fault(fake, action, "anthropic")) is not None:
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


def _openai_chat(fake: FakeLLM, body: dict, headers: dict[str, str], _: re.Match[str]) -> Reply:
    lower = {k.lower(): v for k, v in headers.items()}
    response_format = body.get("response_format") or {}
    schema = response_format.get("json_schema") or {}
    stage = schema.get("name")
    messages = body.get("messages", [])
    prompt = _first_user_text(messages)
    feature = _FEATURE_RE.search(prompt)
    action = fake.next_action()
    auth = lower.get("authorization", "")
    fake.record(Recorded("openai", "/v1/chat/completions", stage, int(feature.group(1)) if feature else None,
                         action, len(messages), auth.removeprefix("Bearer ") or None, body))
    if fake.latency:
        time.sleep(fake.latency)
    if response_format.get("type") != "json_schema" or schema.get("strict") is not True:
        return Reply(400, json.dumps({"error": {"message": "json_schema strict expected"}}).encode())
    if (reply := _fault(fake, action, "openai")) is not None:
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
