"""The OpenAI-compatible HTTP API, as a small ASGI application over a ``generate`` backend.

One job: the OpenAI API's HTTP surface (parse a request, format an answer, serve both).

Both the node's gateway and ``wwwserve sim-engine`` speak this API; they differ only in the
backend that produces the chunks and in their ``/metrics``. Parsing and formatting are plain
functions (sans-IO): ``parse_completion()`` turns a request body into a
``CompletionRequest`` or raises ``BadRequestError``
naming the field; the ``*_body`` / ``*_chunk`` functions build OpenAI's JSON shapes.

Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with the
status of the ``RequestError`` subclass (400, 401, 404, 413, 503 with
``Retry-After``, 504). A streamed answer that fails after its first token ends with an
``error`` event and no ``[DONE]``, which the ``openai`` client raises as an error: never a
silent truncation.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from ..engines import MAX_EXTRA_BYTES, ChatMessage, Chunk, CompletionRequest, Emit, Usage
from ..errors import (
    BadRequestError,
    NoCapacityError,
    RequestError,
    UpstreamError,
    WWWServeError,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "Answer",
    "Generate",
    "OpenAIApp",
    "ParsedRequest",
    "completion_body",
    "error_body",
    "parse_completion",
    "stream_chunk",
]

logger = logging.getLogger(__name__)

#: Default limit on request bodies (bytes).
DEFAULT_MAX_BODY = 4 * 1024 * 1024

Generate = Callable[[CompletionRequest, Emit], Awaitable[Usage]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_ids = itertools.count()
_PREFIX = os.urandom(4).hex()


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_of(scope: Scope) -> str | None:
    """The user's ``X-Request-Id`` header (their trace id for the request), if any.

    Raises a 400 if it is not 1-64 characters of letters, digits and ``. _ : -``.
    """
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = str(value.decode("latin-1")).strip()
            if not _REQUEST_ID_RE.match(text):
                raise _HTTPError(400, "X-Request-Id: must be 1-64 characters of letters, "
                                 "digits and . _ : -")
            return text
    return None


def _new_id() -> str:
    return f"{_PREFIX}{next(_ids):08x}"


# ---- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A parsed completion request and the response options that are not part of it."""

    request: CompletionRequest
    include_usage: bool = False


def _bad(message: str, param: str | None) -> BadRequestError:
    err = BadRequestError(message)
    err.param = param  # type: ignore[attr-defined]
    return err


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise _bad(f"{key}: must be a number in [{lo:g}, {hi:g}], got {value!r}", key)
    return float(value)


def _text(value: str, where: str) -> str:
    """``value``, if it can be encoded as UTF-8 (JSON lets a body carry a lone surrogate
    such as ``"\\ud800"``, which no engine can be sent)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(f"{where}: not valid Unicode ({exc.reason} at position {exc.start})",
                   where) from None
    return value


def _content(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise _bad(f"{where}[{i}]: only text content parts "
                           "({'type': 'text', 'text': ...}) are supported (wwwserve "
                           "serves text models)", where)
            parts.append(_text(part["text"], f"{where}[{i}].text"))
        return "".join(parts)
    if value is None:
        return None
    raise _bad(f"{where}: must be a string or a list of text parts", where)


#: body fields the gateway reads itself; every other field is passed through unchanged
_ACTED = frozenset({"model", "messages", "prompt", "n", "best_of", "use_beam_search",
                    "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
                    "stream_options", "ignore_eos", "timeout"})

#: fields a user may not set (the node's to set on its engine), with why
_REFUSED = {
    "request_id": "send it as the X-Request-Id header",
    "rid": "send it as the X-Request-Id header",
    "priority": "an engine's scheduling priority is its provider's to set",
}


def _pass_through(fields: dict[str, Any], where: str) -> str:
    """``fields`` as the JSON of a pass-through ``extra`` ("" for none), checked to be
    sendable to an engine and within ``MAX_EXTRA_BYTES``."""
    if not fields:
        return ""
    try:
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
    except ValueError:
        raise _bad(f"{where}: numbers must be finite", where) from None
    except RecursionError:
        raise _bad(f"{where}: nested too deeply", where) from None
    _text(text, where)
    if len(text) > MAX_EXTRA_BYTES:
        raise _bad(f"{where}: more than {MAX_EXTRA_BYTES} bytes of fields to pass on",
                   where)
    return text


def _message(m: Any, i: int) -> ChatMessage:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise _bad(f"messages[{i}]: must be an object with a string 'role'", "messages")
    content = _content(m.get("content"), f"messages[{i}].content")
    others = {k: v for k, v in m.items() if k not in ("role", "content")}
    return ChatMessage(_text(m["role"], f"messages[{i}].role"), content,
                       _pass_through(others, f"messages[{i}]"))


def parse_completion(raw: bytes, *, chat: bool, request_id: str | None = None,
                     timeout: float = 600.0,
                     max_tokens_limit: int = 1 << 20) -> ParsedRequest:
    """Parse the JSON body of ``/v1/chat/completions`` (``chat``) or ``/v1/completions``.

    The fields wwwserve acts on are checked; every other field is carried unchanged to the
    engine that runs the request (``CompletionRequest.extra``). Nothing is filled in
    for a field the user left out. What cannot be honoured (``n`` > 1, non-text content)
    is a ``BadRequestError`` naming the field. ``timeout`` (seconds) may be
    overridden per request by the body's ``timeout`` field (a wwwserve extension),
    bounded by the given value.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}", None) from None
    except RecursionError:
        raise _bad("request body is nested too deeply", None) from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", None)
    model = body.get("model", "auto")
    if not isinstance(model, str) or not model:
        raise _bad("model: must be a non-empty string", "model")
    _text(model, "model")
    for key in ("n", "best_of"):
        value = body.get(key, 1)
        if value is not None and (isinstance(value, bool) or value != 1):
            raise _bad(f"{key}: only {key}=1 is supported (one answer per request), "
                       f"got {value!r}", key)
    if body.get("use_beam_search"):
        raise _bad("use_beam_search: beam search is not supported", "use_beam_search")
    for key, why in _REFUSED.items():
        if key in body:
            raise _bad(f"{key}: may not be set ({why})", key)
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    if chat:
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise _bad("messages: must be a non-empty list of {role, content} objects",
                       "messages")
        messages = tuple(_message(m, i) for i, m in enumerate(raw_messages))
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            raise _bad("prompt: must be a string (one prompt per request)", "prompt")
        prompt = _text(p, "prompt")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    mt = body.get(key)
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int)
                           or not 1 <= mt <= max_tokens_limit):
        raise _bad(f"{key}: must be an integer in [1, {max_tokens_limit}], got {mt!r}", key)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"stream: must be true or false, got {stream!r}", "stream")
    opts = body.get("stream_options")
    opts = {} if opts is None else opts
    if not isinstance(opts, dict):
        raise _bad("stream_options: must be an object", "stream_options")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _bad(f"ignore_eos: must be true or false, got {ignore_eos!r}", "ignore_eos")
    budget = _number(body, "timeout", timeout, 0.001, timeout)
    request = CompletionRequest(
        request_id=request_id or _new_id(), model=model, messages=messages, prompt=prompt,
        max_tokens=mt,
        temperature=_optional_number(body, "temperature", 0.0, 2.0),
        top_p=_optional_number(body, "top_p", 0.0, 1.0),
        stream=stream, ignore_eos=ignore_eos, timeout=budget,
        extra=_pass_through({k: v for k, v in body.items() if k not in _ACTED},
                            "request body"),
    )
    return ParsedRequest(request, include_usage=bool(opts.get("include_usage", False)))


def _optional_number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    return None if body.get(key) is None else _number(body, key, 0.0, lo, hi)


# ---- formatting -------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


class Answer:
    """A whole answer assembled from its chunks, as the engine would have sent it unstreamed:
    text, tool calls (streamed deltas merged by index), ``reasoning_content`` and other
    delta fields, logprobs, finish reason, served model name and fingerprint."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.model = ""
        self.fingerprint = ""
        self.fields: dict[str, Any] = {}
        self.logprobs: Any = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._unindexed: list[dict[str, Any]] = []

    def add(self, chunk: Chunk) -> None:
        """Take the next chunk."""
        self.parts.append(chunk.text)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        self.model = self.model or chunk.model
        self.fingerprint = self.fingerprint or chunk.fingerprint
        if chunk.delta:
            for key, value in chunk.delta_fields().items():
                if key == "tool_calls" and isinstance(value, list):
                    self._add_calls(value)
                elif isinstance(value, str) and isinstance(self.fields.get(key), str):
                    self.fields[key] += value  # reasoning_content, refusal: in pieces
                else:
                    self.fields[key] = value
        if chunk.logprobs:
            self.logprobs = _merge_logprobs(self.logprobs, chunk.logprobs_value())

    def _add_calls(self, calls: list[Any]) -> None:
        for call in calls:
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                self._unindexed.append(call)
                continue
            have = self._calls.get(index)
            if have is None:
                self._calls[index] = {k: v for k, v in call.items() if k != "index"}
                continue
            fn = call.get("function")
            if isinstance(fn, dict):
                mine = have.setdefault("function", {})
                for k, v in fn.items():
                    if isinstance(v, str) and isinstance(mine.get(k), str):
                        mine[k] += v
                    elif v is not None:
                        mine[k] = v
            for k, v in call.items():
                if k not in ("index", "function") and v is not None and k not in have:
                    have[k] = v

    @property
    def text(self) -> str:
        """The answer's text."""
        return "".join(self.parts)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The answer's tool calls, whole."""
        return [*(self._calls[i] for i in sorted(self._calls)), *self._unindexed]


def _merge_logprobs(have: Any, more: Any) -> Any:
    """Logprobs of two consecutive pieces as one: lists (one entry per token) joined."""
    if not isinstance(have, dict) or not isinstance(more, dict):
        return more if more is not None else have
    out = dict(have)
    for key, value in more.items():
        if isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]
        elif value is not None or key not in out:
            out[key] = value
    return out


def completion_body(request: CompletionRequest, answer: Answer, usage: Usage,
                    created: int) -> dict[str, Any]:
    """The JSON of a whole (non-streamed) chat or text completion."""
    finish = answer.finish_reason or "stop"
    if request.is_chat:
        calls = answer.tool_calls
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls and not answer.text else answer.text}
        message.update(answer.fields)
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "message": message,
                                  "logprobs": answer.logprobs}
        obj, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": answer.text, "finish_reason": finish,
                  "logprobs": answer.logprobs}
        obj, prefix = "text_completion", "cmpl"
    out = {"id": f"{prefix}-{request.request_id}", "object": obj, "created": created,
           "model": answer.model or request.model, "choices": [choice],
           "usage": _usage(usage)}
    if answer.fingerprint:
        out["system_fingerprint"] = answer.fingerprint
    return out


def stream_chunk(request: CompletionRequest, created: int, model: str,
                 chunk: Chunk | None = None, *, usage: Usage | None = None,
                 first: bool = False, fingerprint: str = "") -> dict[str, Any]:
    """One SSE event of a streamed completion: ``chunk`` as the engine sent it, or (only
    ``usage``) the final usage event."""
    choices: list[dict[str, Any]] = []
    if request.is_chat:
        obj, prefix = "chat.completion.chunk", "chatcmpl"
        if chunk is not None:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if chunk.text:
                delta["content"] = chunk.text
            if chunk.delta:
                delta.update(chunk.delta_fields())
            choices = [{"index": 0, "delta": delta, "finish_reason": chunk.finish_reason,
                        "logprobs": chunk.logprobs_value()}]
    else:
        obj, prefix = "text_completion", "cmpl"
        if chunk is not None:
            choices = [{"index": 0, "text": chunk.text, "finish_reason": chunk.finish_reason,
                        "logprobs": chunk.logprobs_value()}]
    out: dict[str, Any] = {"id": f"{prefix}-{request.request_id}", "object": obj,
                           "created": created, "model": model, "choices": choices}
    if fingerprint:
        out["system_fingerprint"] = fingerprint
    if usage is not None:
        out["usage"] = _usage(usage)
    return out


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                404: "not_found_error", 405: "invalid_request_error",
                413: "invalid_request_error", 429: "rate_limit_error",
                501: "not_implemented", 503: "service_unavailable",
                504: "timeout", 502: "upstream_error"}


def error_body(status: int, message: str, param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, trio.TooSlowError):
        return 504  # the gateway's own backstop on the request's deadline
    return exc.status if isinstance(exc, RequestError) else 500


# ---- the ASGI app -----------------------------------------------------------------------


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


async def send_response(send: Send, status: int, body: bytes, content_type: str,
                        headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send a whole HTTP response."""
    hdrs = [(b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: object,
                    headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send a JSON response."""
    await send_response(send, status, json.dumps(obj).encode(), "application/json", headers)


class _WithoutCreated:
    """``registry`` without the ``*_created`` sample of every counter and histogram
    (creation timestamps no dashboard reads: vLLM and SGLang export none). Per registry,
    not prometheus_client's process-wide switch: an integrator's own metrics keep theirs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if any(s.name.endswith("_created") for s in family.samples):
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """A route serving ``registry`` in Prometheus text exposition."""
    exposed = _WithoutCreated(registry)

    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, generate_latest(exposed),
                            CONTENT_TYPE_LATEST)

    return metrics


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read a request body, refusing (413) more than ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise _HTTPError(400, "client disconnected")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _HTTPError(413, f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
        if not event.get("more_body", False):
            return b"".join(parts)


class OpenAIApp:
    """An ASGI app serving the OpenAI API over ``generate``; extra routes may be added.

    ``models`` lists model ids for ``/v1/models``; ``api_key``, when set, is required as
    ``Authorization: Bearer <key>`` on ``/v1/*``; ``max_body`` limits request bodies;
    ``timeout`` is the default and maximum per-request budget in seconds;
    ``on_done(outcome, latency, ttft)`` observes every completion request, including the
    refused ones (outcome ``bad_request``). A streamed response starts (status 200 and
    headers) with its first chunk, so that a request failing before any output gets its
    proper status; with ``headers_at_once`` it starts at once, as SGLang's and vLLM's do.
    An error after the start is sent as a last event, ``{"error": {...}}`` with the status
    as its ``code`` (SGLang's and vLLM's form), and no ``[DONE]``.
    """

    def __init__(
        self,
        generate: Generate,
        models: Callable[[], Iterable[str]],
        *,
        api_key: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        timeout: float = 600.0,
        health: Callable[[], bool] = lambda: True,
        on_done: Callable[[str, float, float | None], None] | None = None,
        headers_at_once: bool = False,
        cors_origins: Iterable[str] = (),
    ) -> None:
        self.generate = generate
        #: origins allowed to call from a browser (CORS); "*" allows any
        self.cors_origins = frozenset(cors_origins)
        self.headers_at_once = headers_at_once
        self.models = models
        self.api_key = api_key
        self.max_body = max_body
        self.timeout = timeout
        self.health = health
        self.on_done = on_done
        #: requests whose outcome was reported (by id of the request object, while running)
        self._finished: dict[int, bool] = {}
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._text,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("POST", "/v1/embeddings"): _not_implemented("embeddings"),
            ("POST", "/v1/responses"): _not_implemented(
                "the Responses API (use /v1/chat/completions)"),
        }

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Add or replace a route."""
        self.routes[(method, path)] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        send = self._with_cors(scope, send)
        handler = self.routes.get((method, path))
        if handler is None and method == "GET" and path.startswith("/v1/models/"):
            handler = self._model
        try:
            if method == "OPTIONS" and self.cors_origins:
                await self._preflight(scope, send)
                return
            if handler is None:
                if any(p == path for _, p in self.routes):
                    raise _HTTPError(405, f"method {method} not allowed on {path}")
                raise _HTTPError(404, f"no route {path}")
            if path.startswith("/v1/") and self.api_key is not None:
                self._authorize(scope)
            await handler(scope, receive, send)
        except _HTTPError as exc:
            await send_json(send, exc.status, error_body(exc.status, str(exc)), exc.headers)
        except Exception:
            # a bug, not bad input: log it and answer 500 in the usual envelope if we still can
            logger.exception("internal error serving %s %s", method, path)
            with contextlib.suppress(Exception):
                await send_json(send, 500, error_body(500, "internal error"))

    def _authorize(self, scope: Scope) -> None:
        assert self.api_key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(
                        token.strip().encode(), self.api_key.encode()):
                    return
        raise _HTTPError(401, "missing or wrong API key (Authorization: Bearer <key>)")

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "wwwserve"}
                for m in sorted(set(self.models()))]
        await send_json(send, 200, {"object": "list", "data": data})

    async def _model(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path"][len("/v1/models/"):]
        if name not in set(self.models()):
            raise _HTTPError(404, f"model {name!r} is not served in this network")
        await send_json(send, 200, {"id": name, "object": "model",
                                    "created": int(time.time()), "owned_by": "wwwserve"})

    def _allowed_origin(self, scope: Scope) -> str | None:
        if not self.cors_origins:
            return None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = str(value.decode("latin-1"))
                if "*" in self.cors_origins:
                    return "*"
                return origin if origin in self.cors_origins else None
        return None

    def _with_cors(self, scope: Scope, send: Send) -> Send:
        """``send``, adding CORS headers to the response when the origin is allowed."""
        origin = self._allowed_origin(scope)
        if origin is None:
            return send
        extra = [(b"access-control-allow-origin", origin.encode()),
                 (b"access-control-expose-headers", b"x-request-id, retry-after")]
        if origin != "*":
            extra.append((b"vary", b"origin"))

        async def cors_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return cors_send

    async def _preflight(self, scope: Scope, send: Send) -> None:
        allowed = self._allowed_origin(scope) is not None
        headers = [("access-control-allow-methods", "GET, POST, OPTIONS"),
                   ("access-control-allow-headers",
                    "authorization, content-type, x-request-id"),
                   ("access-control-max-age", "600")] if allowed else []
        await send_response(send, 204 if allowed else 403, b"", "text/plain", headers)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        ok = self.health()
        await send_json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable"})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._complete(scope, receive, send, chat=True)

    async def _text(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._complete(scope, receive, send, chat=False)

    async def _complete(self, scope: Scope, receive: Receive, send: Send, *,
                        chat: bool) -> None:
        try:
            request_id = request_id_of(scope)
            raw = await read_body(receive, self.max_body)
        except _HTTPError:
            if self.on_done is not None:
                self.on_done("bad_request", 0.0, None)
            raise
        try:
            parsed = parse_completion(raw, chat=chat, timeout=self.timeout,
                                      request_id=request_id)
        except BadRequestError as exc:
            if self.on_done is not None:
                self.on_done("bad_request", 0.0, None)
            await send_json(send, 400, error_body(400, str(exc), getattr(exc, "param", None)))
            return
        request = parsed.request
        start = trio.current_time()
        # a client that goes away cancels its request: the engine's (or the executor's)
        # work stops at once rather than running to the end for nobody
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            if request.stream:
                await self._stream(request, parsed.include_usage, send)
            else:
                await self._whole(request, send)
            nursery.cancel_scope.cancel()
        if nursery.cancel_scope.cancelled_caught and not self._finished.pop(id(request), False):
            logger.info("request %s cancelled: the client went away", request.request_id)
            self._done(request, "cancelled", start, None)
        self._finished.pop(id(request), None)

    def _done(self, request: CompletionRequest, outcome: str, start: float,
              first: float | None) -> None:
        self._finished[id(request)] = True
        if self.on_done is not None:
            now = trio.current_time()
            self.on_done(outcome, now - start, None if first is None else first - start)

    async def _whole(self, request: CompletionRequest, send: Send) -> None:
        start = trio.current_time()
        first: list[float] = []
        answer = Answer()

        async def collect(chunk: Chunk) -> None:
            if not first:
                first.append(trio.current_time())
            answer.add(chunk)

        try:
            with trio.fail_after(request.timeout + 1.0):
                usage = await self.generate(request, collect)
        except (WWWServeError, trio.TooSlowError) as exc:
            status = _status_of(exc)
            self._done(request, _outcome(status), start, None)
            headers = [*_retry_headers(exc), ("x-request-id", request.request_id)]
            await send_json(send, status, error_body(status, str(exc) or "deadline exceeded"),
                            headers)
            return
        self._done(request, "ok", start, first[0] if first else None)
        await send_json(send, 200, completion_body(request, answer, usage, int(time.time())),
                        [("x-request-id", request.request_id)])

    async def _stream(self, request: CompletionRequest, include_usage: bool,
                      send: Send) -> None:
        start = trio.current_time()
        created = int(time.time())
        started = False
        first: float | None = None
        model = request.model
        fingerprint = ""

        async def begin() -> None:
            nonlocal started
            started = True
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-request-id", request.request_id.encode())]})

        async def event(obj: object) -> None:
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(obj).encode() + b"\n\n"})

        async def forward(chunk: Chunk) -> None:
            nonlocal first, model, fingerprint
            if not started:
                await begin()
            is_first = first is None
            if is_first:
                first = trio.current_time()
                # the served model's name comes with the first chunk (else the request's)
                model = chunk.model or model
                fingerprint = chunk.fingerprint
            await event(stream_chunk(request, created, model, chunk, first=is_first,
                                     fingerprint=fingerprint))

        if self.headers_at_once:
            await begin()
        try:
            with trio.fail_after(request.timeout + 1.0):
                usage = await self.generate(request, forward)
        except (WWWServeError, trio.TooSlowError) as exc:
            status = _status_of(exc)
            message = str(exc) or "deadline exceeded"
            self._done(request, _outcome(status), start, first)
            if not started:
                await send_json(send, status, error_body(status, message),
                                [*_retry_headers(exc), ("x-request-id", request.request_id)])
                return
            # no [DONE] after it: a client that waits for one sees that the answer broke off
            await event(error_body(status, message, code=status))
            await send({"type": "http.response.body", "body": b""})
            return
        if not started:
            await begin()
        if include_usage:
            await event(stream_chunk(request, created, model, usage=usage,
                                     fingerprint=fingerprint))
        self._done(request, "ok", start, first)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _not_implemented(what: str) -> Handler:
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        raise _HTTPError(501, f"{scope['path']}: {what} is not implemented by wwwserve")

    return refuse


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client disconnects (the body was read already)."""
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            scope.cancel()
            return


def _outcome(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 429: "rate_limited", 502: "broken",
            503: "no_capacity", 504: "deadline"}.get(status, "error")


def _retry_headers(exc: BaseException) -> list[tuple[str, str]]:
    retry_after = getattr(exc, "retry_after", None) \
        if isinstance(exc, NoCapacityError | UpstreamError) else None
    if retry_after is None:
        return []
    return [("retry-after", str(max(1, math.ceil(retry_after))))]
