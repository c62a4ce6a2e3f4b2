"""The simulated engine: continuous batching on a calibrated GPU performance model.

It runs in trio time, so under ``MockClock(autojump_threshold=0)`` an hour of serving takes
seconds, and it reports the same load signals as SGLang and vLLM. Each iteration decodes one
token for every running request and spends the rest of a chunked-prefill budget on prompts;
its duration comes from a :class:`Profile` (see ``profiles.yaml`` for the figures and their
sources). A request is admitted only when its whole KV footprint fits (the simulator knows
each request's output length, so it never needs to preempt); until then it waits in a FIFO
queue. Output text is synthetic: one word per token, deterministic per seed and request id, after a
quality marker (:func:`~wwwserve.duel.judge.quality_marker`: the answer's simulated quality,
drawn around the profile's latent ``quality``). A judge prompt
(:func:`~wwwserve.duel.judge.judge_messages`) is answered with a verdict drawn from the
simulated judge model, so duels run end to end on simulated engines.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

import trio
import yaml

from .._compat import TaskStatus
from ..duel.judge import (
    DEFAULT_MODEL,
    QualityModel,
    is_judge_prompt,
    quality_marker,
    split_judge_prompt,
)
from ..errors import ConfigError, EngineError, EngineUnavailableError
from .base import Chunk, CompletionRequest, Emit, EngineLoad, Usage, approx_tokens

__all__ = ["Profile", "SimEngine", "get_profile", "profile_names"]

_WORDS = ("the", "model", "answer", "is", "a", "of", "to", "and", "we", "so", "token", "then",
          "compute", "value", "step", "result", "check", "next", "sum", "thus")

#: Seconds a busy engine may fall behind its own schedule and still catch up (a host that
#: stalls longer, e.g. a stopped process, restarts the schedule from now).
MAX_CATCH_UP = 0.05


@dataclass(frozen=True, slots=True)
class Profile:
    """Step-time model and capacity of one model on one GPU (see ``profiles.yaml``)."""

    name: str
    model: str
    base_ms: float
    per_token_ms: float
    attn_ms_per_ctx_token: float
    floor_ms: float
    kv_capacity_tokens: int
    quality: float = 0.0
    backend: str = "flashinfer"
    backend_factor: float = 1.0

    def step_seconds(self, batch_tokens: int, batch_ctx: int) -> float:
        """Duration of one iteration processing ``batch_tokens`` over ``batch_ctx`` context."""
        ms = max(self.floor_ms, self.base_ms + self.per_token_ms * batch_tokens)
        ms += self.attn_ms_per_ctx_token * batch_ctx
        return ms * self.backend_factor / 1000.0


@cache
def _data() -> dict[str, Any]:
    text = resources.files("wwwserve.engines").joinpath("profiles.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def profile_names() -> tuple[str, ...]:
    """Names of the shipped profiles, e.g. ``a100-80g/qwen3-8b``."""
    return tuple(sorted(_data()["profiles"]))


def get_profile(name: str, backend: str = "flashinfer") -> Profile:
    """The shipped profile ``name`` with attention ``backend`` (flashinfer, triton, sdpa)."""
    data = _data()
    if name not in data["profiles"]:
        raise ConfigError(f"unknown engine profile {name!r}; known: {', '.join(profile_names())}")
    if backend not in data["backends"]:
        raise ConfigError(
            f"unknown attention backend {backend!r}; known: {', '.join(sorted(data['backends']))}")
    return Profile(name=name, backend=backend, backend_factor=float(data["backends"][backend]),
                   **data["profiles"][name])


class _Req:
    __slots__ = ("cancelled", "finish", "generated", "output", "prefilled", "prompt", "rng",
                 "script", "send", "unsent")

    def __init__(self, prompt: int, output: int, rng: random.Random,
                 send: trio.MemorySendChannel[Chunk | Exception], finish: str,
                 script: str | None = None) -> None:
        self.finish = finish
        #: the whole text to stream instead of synthetic words (a marker and words after it
        #: if it ends with a space)
        self.script = script
        self.prompt = prompt
        self.output = output
        self.rng = rng
        self.send = send
        self.prefilled = 0
        self.generated = 0
        self.unsent = 0
        self.cancelled = False

    @property
    def need(self) -> int:
        return self.prompt + self.output

    @property
    def ctx(self) -> int:
        return self.prefilled + self.generated


class SimEngine:
    """A simulated SGLang-like engine serving ``profile.model`` (see module docs).

    ``stream_interval`` tokens are sent per chunk (like SGLang's ``--stream-interval``);
    ``mean_output_tokens`` is the mean of the (geometric) output length of requests that do
    not set ``ignore_eos``. Deterministic for a ``seed``.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        models: tuple[str, ...] | None = None,
        seed: int = 0,
        stream_interval: int = 1,
        max_running: int = 256,
        prefill_chunk: int = 2048,
        mean_output_tokens: int = 256,
        quality_markers: bool = True,
        quality_model: QualityModel = DEFAULT_MODEL,
    ) -> None:
        self.profile = profile
        self._models = models or (profile.model,)
        self.seed = seed
        self.stream_interval = max(1, stream_interval)
        self.max_running = max_running
        self.prefill_chunk = prefill_chunk
        self.mean_output_tokens = mean_output_tokens
        self.quality = profile.quality
        self.quality_markers = quality_markers
        self.quality_model = quality_model
        self._waiting: list[_Req] = []
        self._running: list[_Req] = []
        self._reserved = 0
        self._wake = trio.Event()
        # where the engine's own schedule stands while it is busy: the next iteration starts
        # when the last one was due to end, not when the host got round to waking the loop
        # (on a busy host the lateness of every wake-up would otherwise add up over a long
        # answer, and the engine would run slower than its profile)
        self._busy_until: float | None = None
        self._healthy = True
        self.completed = 0
        self.generated_tokens = 0

    # ---- Engine protocol --------------------------------------------------------------------
    @property
    def models(self) -> tuple[str, ...]:
        """Model names this engine answers to."""
        return self._models

    def load(self) -> EngineLoad:
        """KV tokens in use over capacity, running and queued requests (instantaneous)."""
        used = sum(r.ctx for r in self._running)
        return EngineLoad(
            token_usage=min(1.0, used / self.profile.kv_capacity_tokens),
            running=len(self._running), queued=len(self._waiting), healthy=self._healthy)

    def output_length(self, request: CompletionRequest) -> int:
        """How many tokens this engine will generate for ``request`` (deterministic)."""
        if request.ignore_eos:
            return max(1, request.max_tokens)
        rng = random.Random(f"{self.seed}:len:{request.request_id}")
        p = 1.0 / max(1, self.mean_output_tokens)
        n = 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p)) if p < 1 else 1
        return max(1, min(request.max_tokens, n))

    def _script(self, request: CompletionRequest) -> str | None:
        """A judge prompt gets a verdict; any other answer starts with its quality marker."""
        messages = tuple((m.role, m.content) for m in request.messages)
        if is_judge_prompt(messages):
            parts = split_judge_prompt(messages[1][1])
            rng = random.Random(f"{self.seed}:judge:{request.request_id}")
            verdict = "abstain" if parts is None else self.quality_model.vote(
                parts[1], parts[2], rng)
            return f"Verdict: {verdict}"
        if not self.quality_markers:
            return None
        rng = random.Random(f"{self.seed}:quality:{request.request_id}")
        return quality_marker(self.quality_model.answer_quality(self.quality, rng))

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Queue ``request``, stream its tokens as the batching loop produces them."""
        if not self._healthy:
            raise EngineUnavailableError(f"simulated engine {self.profile.name} is down")
        prompt = request.prompt_tokens()
        output = self.output_length(request)
        if prompt + output > self.profile.kv_capacity_tokens:
            raise EngineError(f"request needs {prompt + output} KV tokens; the engine has "
                              f"{self.profile.kv_capacity_tokens}")
        script = self._script(request)
        if script is not None and not script.endswith(" "):
            output = max(1, min(request.max_tokens, approx_tokens(script)))
        send, receive = trio.open_memory_channel[Chunk | Exception](math.inf)
        req = _Req(prompt, output,
                   random.Random(f"{self.seed}:text:{request.request_id}"), send,
                   "length" if output >= request.max_tokens else "stop", script)
        self._waiting.append(req)
        self._wake.set()
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, Exception):
                        raise item
                    await emit(item)
                    if item.finish_reason is not None:
                        return item.usage or Usage(prompt, req.generated)
            raise EngineError("simulated engine stopped")
        finally:
            req.cancelled = True
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The batching loop, advanced by events rather than token by token.

        Iterations that prefill are simulated one by one. Between events (an arrival, a
        completion, a chunk due to be streamed) the batch is fixed, so the iterations of a
        decode-only stretch are summed in closed form and slept in one go; an arrival wakes
        the loop, which finishes the iteration in progress (a real engine admits only at
        iteration boundaries) and admits it. Same timings as one sleep per iteration, a
        fraction of the work.
        """
        task_status.started()
        while True:
            self._drop_cancelled()
            self._admit()
            if not self._running:
                self._busy_until = None
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            if any(r.prefilled < r.prompt for r in self._running):
                await self._prefill_step()
            else:
                await self._decode_stretch()
            # finished requests leave now; cancelled ones (and their KV reservation) at the
            # top of the next iteration
            self._running = [r for r in self._running if r.generated < r.output]

    async def _prefill_step(self) -> None:
        budget = self.prefill_chunk
        decoding = [r for r in self._running if r.prefilled >= r.prompt]
        prefill: list[tuple[_Req, int]] = []
        for r in self._running:
            if r.prefilled < r.prompt and budget > 0:
                take = min(budget, r.prompt - r.prefilled)
                prefill.append((r, take))
                budget -= take
        batch_tokens = len(decoding) + sum(t for _, t in prefill)
        batch_ctx = sum(r.ctx for r in self._running)
        end = self._iteration_start() + self.profile.step_seconds(batch_tokens, batch_ctx)
        await trio.sleep_until(end)
        self._busy_until = end
        for r, take in prefill:
            r.prefilled += take
            if r.prefilled >= r.prompt:
                decoding.append(r)  # the step that ends the prefill yields a token
        for r in decoding:
            if not r.cancelled:
                self._advance(r, 1)

    def _stretch_seconds(self, b: int, ctx0: int, k: int) -> float:
        """Duration of ``k`` decode iterations of ``b`` requests from context ``ctx0``
        (the context grows by ``b`` tokens per iteration)."""
        p = self.profile
        fixed = max(p.floor_ms, p.base_ms + p.per_token_ms * b)
        ms = k * (fixed + p.attn_ms_per_ctx_token * ctx0) \
            + p.attn_ms_per_ctx_token * b * k * (k - 1) / 2
        return ms * p.backend_factor / 1000.0

    async def _decode_stretch(self) -> None:
        running = self._running
        b = len(running)
        ctx0 = sum(r.ctx for r in running)
        # the next event: a completion, or a chunk due (every stream_interval tokens)
        k = min(min(r.output - r.generated for r in running),
                min(self.stream_interval - r.unsent if r.generated else 1 for r in running))
        k = max(1, k)
        start = self._iteration_start()
        end = start + self._stretch_seconds(b, ctx0, k)
        self._wake = trio.Event()
        with trio.move_on_at(end):
            await self._wake.wait()
        now = trio.current_time()
        if now < end:
            # woken (an arrival): finish the iteration in progress, then stop there
            lo, hi = 1, k  # the least number of iterations whose end is at or after now
            while lo < hi:
                mid = (lo + hi) // 2
                if start + self._stretch_seconds(b, ctx0, mid) >= now:
                    hi = mid
                else:
                    lo = mid + 1
            k = lo
            end = start + self._stretch_seconds(b, ctx0, k)
            await trio.sleep_until(end)
        self._busy_until = end
        for r in running:
            if not r.cancelled:
                self._advance(r, k)

    # ---- internals --------------------------------------------------------------------------
    def _iteration_start(self) -> float:
        """When the next iteration starts: where the busy engine's schedule stands, unless
        the host fell more than :data:`MAX_CATCH_UP` behind it (then from now)."""
        now = trio.current_time()
        if self._busy_until is not None and now - self._busy_until <= MAX_CATCH_UP:
            return self._busy_until
        return now

    def _drop_cancelled(self) -> None:
        self._waiting = [r for r in self._waiting if not r.cancelled]
        keep = []
        for r in self._running:
            if r.cancelled:
                self._reserved -= r.need
            else:
                keep.append(r)
        self._running = keep

    def _admit(self) -> None:
        cap = self.profile.kv_capacity_tokens
        while (self._waiting and len(self._running) < self.max_running
               and self._reserved + self._waiting[0].need <= cap):
            r = self._waiting.pop(0)
            self._reserved += r.need
            self._running.append(r)

    def _advance(self, r: _Req, k: int) -> None:
        """``r`` generated ``k`` more tokens: stream them if a chunk is due (the first token
        at once, then every ``stream_interval`` tokens, and the last)."""
        first = r.generated == 0
        r.generated += k
        r.unsent += k
        self.generated_tokens += k
        done = r.generated >= r.output
        if first or r.unsent >= self.stream_interval or done:
            if r.script is not None and not r.script.endswith(" "):
                text = r.script if first else ""
            else:
                words = " ".join(r.rng.choices(_WORDS, k=r.unsent))
                text = (" " + words) if r.generated > r.unsent else words
                if first and r.script:
                    text = r.script + text
            chunk = Chunk(text=text, tokens=r.unsent)
            r.unsent = 0
            if done:
                chunk = replace(chunk, finish_reason=r.finish, usage=Usage(r.prompt, r.generated))
                self._reserved -= r.need
                self.completed += 1
            try:
                r.send.send_nowait(chunk)
            except trio.BrokenResourceError:
                r.cancelled = True  # its requester left during this step

    def estimate_completion(self, prompt_tokens: int, output_tokens: int) -> float:
        """Seconds until a new request of this size would finish here, from the engine's
        exact state (an oracle for experiments; real engines do not expose this).

        A fluid model of continuous batching: requests are admitted in order while their KV
        fits, every iteration decodes one token of each running request, and time jumps
        from one completion to the next at the current iteration time.
        """
        cap = self.profile.kv_capacity_tokens
        # (remaining tokens, KV reserved, is the new request)
        running = [(r.output - r.generated + (r.prompt - r.prefilled) // max(
            1, self.prefill_chunk), r.need, False) for r in self._running if not r.cancelled]
        queue = [(r.output + r.prompt // max(1, self.prefill_chunk), r.need, False)
                 for r in self._waiting if not r.cancelled]
        queue.append((output_tokens, prompt_tokens + output_tokens, True))
        reserved = sum(n for _, n, _ in running)
        t = 0.0
        while True:
            while queue and len(running) < self.max_running and reserved + queue[0][1] <= cap:
                item = queue.pop(0)
                reserved += item[1]
                running.append(item)
            if not running:
                return math.inf  # the request can never fit
            step = self.profile.step_seconds(len(running), reserved // 2)
            k = min(rem for rem, _, _ in running)
            t += max(1, k) * step
            left = []
            for rem, need, mine in running:
                if rem - k <= 0:
                    if mine:
                        return t
                    reserved -= need
                else:
                    left.append((rem - k, need, mine))
            running = left

    # ---- fault injection --------------------------------------------------------------------
    def crash(self) -> None:
        """Fail every request in flight and refuse new ones until :meth:`recover`."""
        self._healthy = False
        err = EngineUnavailableError(f"simulated engine {self.profile.name} crashed")
        for r in self._waiting + self._running:
            with contextlib.suppress(trio.BrokenResourceError):
                r.send.send_nowait(err)
            r.cancelled = True
        self._wake.set()

    def recover(self) -> None:
        """Accept requests again after :meth:`crash`."""
        self._healthy = True
