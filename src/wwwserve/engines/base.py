"""The Engine protocol and the request / chunk types every engine speaks.

An engine serves one or more models and streams completions by *pushing* chunks to an
``emit`` callback (no async generators to close, cancellation just works). It reports its
load with the same three signals SGLang and vLLM export: ``token_usage`` (KV cache in use,
0..1), running requests and queued requests.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .._compat import TaskStatus
from ..wire import Message, message, record

__all__ = [
    "DEFAULT_PLANNED_TOKENS",
    "MAX_EXTRA_BYTES",
    "RESERVED_FIELDS",
    "ChatMessage",
    "Chunk",
    "CompletionRequest",
    "Emit",
    "Engine",
    "EngineLoad",
    "Usage",
    "approx_tokens",
    "visible_text",
    "with_defaults",
]


def approx_tokens(text: str) -> int:
    """Token estimate used where no tokenizer is at hand (~4 characters per token)."""
    return max(1, (len(text) + 3) // 4)


#: most bytes of pass-through JSON one request may carry (its ``extra`` and its messages')
MAX_EXTRA_BYTES = 1024 * 1024

#: what the market plans with when a request does not say how long its answer may be
DEFAULT_PLANNED_TOKENS = 256

#: request fields wwwserve acts on itself: never carried in ``extra`` (a peer that puts
#: them there is refused). ``n``, ``best_of`` and ``use_beam_search`` would multiply the
#: executor's work; ``rid``, ``request_id`` and ``priority`` are the engine's to set, never
#: a stranger's (an id could collide with another user's request, a priority jump its queue)
RESERVED_FIELDS = frozenset({
    "model", "messages", "prompt", "n", "best_of", "use_beam_search", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "stream", "stream_options",
    "ignore_eos", "timeout", "rid", "request_id", "priority",
})

#: message fields wwwserve reads itself (the rest of a message travels in its ``extra``)
_MESSAGE_FIELDS = frozenset({"role", "content"})

#: delta fields a ``Chunk`` holds itself (the rest travel in its ``delta``)
_DELTA_FIELDS = frozenset({"role", "content"})


def _json_value(text: str, where: str) -> object:
    """``text`` parsed as JSON; ``ValueError`` naming ``where`` if it is not."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None


def _json_object(text: str, where: str, reserved: frozenset[str]) -> dict[str, Any]:
    """``text`` (a JSON object) parsed; ``ValueError`` if it is not one, is too long or
    holds a ``reserved`` key."""
    if len(text) > MAX_EXTRA_BYTES:
        raise ValueError(f"{where}: more than {MAX_EXTRA_BYTES} bytes")
    value = _json_value(text, where)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a JSON object")
    clash = sorted(reserved.intersection(value))
    if clash:
        raise ValueError(f"{where}: may not hold {', '.join(clash)}")
    return value


@record
@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat completion request.

    ``content`` is its text (None for an assistant's message that only calls tools);
    ``extra`` is the JSON object of its other fields, carried to the engine unchanged
    (``tool_calls``, ``tool_call_id``, ``name``, ``reasoning_content``).
    """

    role: str
    content: str | None
    extra: str = ""

    def __post_init__(self) -> None:
        if self.extra:
            _json_object(self.extra, "message extra", _MESSAGE_FIELDS)

    def fields(self) -> dict[str, Any]:
        """The message as the engine gets it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.extra:
            out.update(_parsed(self.extra))
        return out


@functools.lru_cache(maxsize=1024)
def _parsed_cached(text: str) -> Any:
    return json.loads(text)


#: longest JSON text whose parse is cached (a chunk's delta is parsed where it is checked,
#: signed and sent on; the cache must not hold much of what a stranger sends)
_CACHED_JSON = 4096


def _shared(text: str) -> Any:
    """``text`` (checked JSON) parsed; the result may be shared: do not change it."""
    return _parsed_cached(text) if len(text) <= _CACHED_JSON else json.loads(text)


def _parsed(text: str) -> Any:
    """``text`` (checked JSON) parsed, as a fresh copy."""
    return copy.deepcopy(_parsed_cached(text)) if len(text) <= _CACHED_JSON \
        else json.loads(text)


@message("completion-request", 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest(Message):
    """An OpenAI-style completion, normalised: a chat if ``messages``, else a text ``prompt``.

    wwwserve acts on the fields it holds; every other field of the user's request body
    (``tools``, ``stop``, ``seed``, ``logprobs``, ``response_format``, ...) travels in
    ``extra``, a JSON object carried unchanged to whichever engine runs the request (over
    the network too), at most ``MAX_EXTRA_BYTES`` and never with a
    ``RESERVED_FIELDS`` key. ``max_tokens``, ``temperature`` and ``top_p`` are None
    when the user did not set them: nothing is sent for them then, so the engine's
    provider's defaults (its ``gen_params``, else the engine's own) apply.

    ``timeout`` is the request's budget in seconds from submission; ``ignore_eos`` asks the
    engine to generate exactly ``max_tokens`` (SGLang and vLLM both accept it; workloads
    replaying traces use it to fix output lengths).

    ``request_id`` is the market's id for the request: made by the node that offloads it
    (what a payment and a receipt name), never taken from a user. ``trace_id`` is the id
    the request arrived with (the user's ``X-Request-Id``, or the gateway's), which logs
    carry along.
    """

    request_id: str
    model: str = "auto"
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    ignore_eos: bool = False
    timeout: float = 600.0
    trace_id: str = ""
    extra: str = ""

    def __post_init__(self) -> None:
        if self.extra:
            _json_object(self.extra, "request extra", RESERVED_FIELDS)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be at least 1, got {self.max_tokens}")

    @property
    def trace(self) -> str:
        """The id the request arrived with (its ``request_id`` where it has none)."""
        return self.trace_id or self.request_id

    @property
    def is_chat(self) -> bool:
        """True for chat completions, False for text completions."""
        return bool(self.messages)

    @property
    def planned_tokens(self) -> int:
        """The answer's length the market plans with: ``max_tokens``, else
        ``DEFAULT_PLANNED_TOKENS``."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_PLANNED_TOKENS

    def extra_fields(self) -> dict[str, Any]:
        """The pass-through fields (a fresh dict)."""
        return _parsed(self.extra) if self.extra else {}

    def prompt_text(self) -> str:
        """The prompt as one string (chat messages joined)."""
        if self.messages:
            return "\n".join(f"{m.role}: {m.content or ''}" for m in self.messages)
        return self.prompt or ""

    def prompt_tokens(self) -> int:
        """Estimated prompt length in tokens."""
        return approx_tokens(self.prompt_text())


def with_defaults(request: CompletionRequest, defaults: Mapping[str, Any]) -> CompletionRequest:
    """``request`` with a provider's ``defaults`` (sampling fields such as ``max_tokens``,
    ``temperature``, ``top_k``) filled in where the request does not set them: the user's
    values always win. Fields that a request holds itself go there, the rest into its
    ``extra``."""
    if not defaults:
        return request
    changes: dict[str, Any] = {}
    extra = request.extra_fields()
    added = False
    for key, value in defaults.items():
        if value is None:
            continue
        if key in ("max_tokens", "temperature", "top_p"):
            if getattr(request, key) is None:
                changes[key] = value
        elif key not in RESERVED_FIELDS and key not in extra:
            extra[key] = value
            added = True
    if added:
        changes["extra"] = json.dumps(extra, separators=(",", ":"))
    return dataclasses.replace(request, **changes) if changes else request


@record
@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting of one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@message("chunk", 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk(Message):
    """A piece of a streamed completion; the last one has ``finish_reason`` and ``usage``.

    Beside the text, a chunk carries the engine's answer unchanged: ``delta``, the JSON
    object of the choice's other delta (or message) fields (``tool_calls``,
    ``reasoning_content``, ``refusal``, ...); ``logprobs``, the choice's logprobs as JSON;
    ``model``, the served model's name, and ``fingerprint``, the engine's
    ``system_fingerprint`` (on the first chunk at least). Empty strings: none.
    """

    text: str
    tokens: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    delta: str = ""
    logprobs: str = ""
    model: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.delta:
            _json_object(self.delta, "chunk delta", _DELTA_FIELDS)
        if self.logprobs:
            if len(self.logprobs) > MAX_EXTRA_BYTES:
                raise ValueError(f"chunk logprobs: more than {MAX_EXTRA_BYTES} bytes")
            _json_value(self.logprobs, "chunk logprobs")

    def delta_fields(self) -> dict[str, Any]:
        """The other delta fields (a fresh dict)."""
        return _parsed(self.delta) if self.delta else {}

    def logprobs_value(self) -> Any:
        """The choice's logprobs (None without)."""
        return _parsed(self.logprobs) if self.logprobs else None


def visible_text(chunk: Chunk) -> str:
    """What of ``chunk`` a user sees as the answer: its text and the tool calls it makes
    (``[tool call NAME] ARGUMENTS``, in pieces as they stream). Receipts sign, and duel
    judges compare, the concatenation over an answer's chunks."""
    if not chunk.delta:
        return chunk.text
    calls = _shared(chunk.delta).get("tool_calls")
    if not isinstance(calls, list):
        return chunk.text
    out = [chunk.text]
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        if isinstance(fn.get("name"), str) and fn["name"]:
            out.append(f"\n[tool call {fn['name']}] ")
        if isinstance(fn.get("arguments"), str):
            out.append(fn["arguments"])
    return "".join(out)


Emit = Callable[[Chunk], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """An engine's load, as its metrics report it. ``healthy`` is False while it is down."""

    token_usage: float = 0.0
    running: int = 0
    queued: int = 0
    healthy: bool = True


class Engine(Protocol):
    """What the dispatcher needs from an inference engine."""

    @property
    def models(self) -> tuple[str, ...]:
        """Names of the models this engine serves."""
        ...

    def load(self) -> EngineLoad:
        """The latest known load (cheap: cached or computed, never waits)."""
        ...

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Run ``request``, pushing chunks to ``emit``; return its usage.

        Raises ``EngineError`` if the engine fails.
        """
        ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None:
        """Background work (batching loop, metric scrapes) until cancelled."""
        ...
