"""The Engine protocol and the request / chunk types every engine speaks.

An engine serves one or more models and streams completions by *pushing* chunks to an
``emit`` callback (no async generators to close, cancellation just works). It reports its
load with the same three signals SGLang and vLLM export: ``token_usage`` (KV cache in use,
0..1), running requests and queued requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from .._compat import TaskStatus
from ..wire import Message, message, record

__all__ = [
    "ChatMessage",
    "Chunk",
    "CompletionRequest",
    "Emit",
    "Engine",
    "EngineLoad",
    "Usage",
    "approx_tokens",
]


def approx_tokens(text: str) -> int:
    """Token estimate used where no tokenizer is at hand (~4 characters per token)."""
    return max(1, (len(text) + 3) // 4)


@record
@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat completion request."""

    role: str
    content: str


@message("completion-request", 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest(Message):
    """An OpenAI-style completion, normalised: a chat if ``messages``, else a text ``prompt``.

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
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stream: bool = False
    ignore_eos: bool = False
    timeout: float = 600.0
    trace_id: str = ""

    @property
    def trace(self) -> str:
        """The id the request arrived with (its ``request_id`` where it has none)."""
        return self.trace_id or self.request_id

    @property
    def is_chat(self) -> bool:
        """True for chat completions, False for text completions."""
        return bool(self.messages)

    def prompt_text(self) -> str:
        """The prompt as one string (chat messages joined)."""
        if self.messages:
            return "\n".join(f"{m.role}: {m.content}" for m in self.messages)
        return self.prompt or ""

    def prompt_tokens(self) -> int:
        """Estimated prompt length in tokens."""
        return approx_tokens(self.prompt_text())


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


@message("chunk", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk(Message):
    """A piece of a streamed completion; the last one has ``finish_reason`` and ``usage``."""

    text: str
    tokens: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None


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

        Raises :class:`~wwwserve.errors.EngineError` if the engine fails.
        """
        ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None:
        """Background work (batching loop, metric scrapes) until cancelled."""
        ...
