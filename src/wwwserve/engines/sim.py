"""The simulated engine: continuous batching on a calibrated GPU performance model.

One job: the simulated engine's batching, admission and timing (what an answer looks
like, for the OpenAI API's fields, is ``sim_api``'s).

It runs in trio time, so under ``MockClock(autojump_threshold=0)`` an hour of serving takes
seconds, and it reports the same load signals as SGLang and vLLM. Each iteration decodes one
token for every running request and spends the rest of a chunked-prefill budget on prompts;
its duration comes from a ``Profile`` (see ``profiles.yaml`` for the figures and their
sources). Admission follows one of two rules (``admission``):

- ``"sglang"`` (the default) is SGLang's scheduler: a request is admitted when its prompt
  plus its ``max_tokens`` (clipped at 4,096) fits in the KV left after every running request
  has reserved ``new_token_ratio`` of what it may still generate. The ratio starts at 0.7,
  decays to 0.098 over 600 decode iterations and is reset when the engine goes idle, so the
  engine over-admits on purpose; when an iteration finds no KV for its new tokens, the
  requests with the fewest generated tokens are *retracted* (their KV freed, put back in the
  queue, later prefilled again over prompt and output so far) and the ratio jumps to what
  the rest have actually used. Figures and rules: SGLang's ``schedule_policy.py``,
  ``schedule_batch.py`` and ``global_config.py`` (``SGLANG_INIT_NEW_TOKEN_RATIO`` 0.7,
  ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR`` 0.14, ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS`` 600,
  ``retract_decode_steps`` 20, ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`` 4,096). A queued
  request therefore means the KV really is full, as on a real SGLang server.
- ``"reserve"`` admits a request only when its whole KV footprint (prompt + the output the
  simulator knows it will generate) fits, so it never needs to retract.

Either way a request that is not admitted waits in a FIFO queue. Output text is synthetic:
one word per token, deterministic per seed and request id, after a quality marker
(``quality_marker()``: the answer's simulated quality, drawn around
the profile's latent ``quality``). A judge prompt (``judge_messages()``)
is answered with a verdict drawn from the simulated judge model, so duels run end to end on
simulated engines.
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
from ..errors import ConfigError, EngineError, EngineUnavailableError
from ..judging import is_judge_prompt, split_judge_prompt
from .base import Chunk, CompletionRequest, Emit, EngineLoad, Usage, approx_tokens
from .quality import DEFAULT_MODEL, QualityModel, quality_marker
from .sim_api import REASONING_TOKENS, Asked, Shaper

__all__ = ["Profile", "SimEngine", "get_profile", "profile_names"]

_WORDS = ("the", "model", "answer", "is", "a", "of", "to", "and", "we", "so", "token", "then",
          "compute", "value", "step", "result", "check", "next", "sum", "thus")

#: Seconds a busy engine may fall behind its own schedule and still catch up (a host that
#: stalls longer, e.g. a stopped process, restarts the schedule from now).
MAX_CATCH_UP = 0.05

#: SGLang's scheduler constants (``global_config.py``, ``schedule_policy.py``): see module docs
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = INIT_NEW_TOKEN_RATIO * 0.14
NEW_TOKEN_RATIO_DECAY = (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / 600
RETRACT_DECODE_STEPS = 20
CLIP_MAX_NEW_TOKENS = 4096

#: the admission rules of ``SimEngine``
ADMISSIONS = ("sglang", "reserve")


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
    #: a reasoning model (answers start with ``reasoning_content``)
    reasoning: bool = False

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
    __slots__ = ("cancelled", "finish", "generated", "kv", "max_new", "output", "prompt", "rng",
                 "script", "send", "todo", "unsent")

    def __init__(self, prompt: int, output: int, rng: random.Random,
                 send: trio.MemorySendChannel[Chunk | Exception], finish: str,
                 script: str | None = None, max_new: int | None = None) -> None:
        self.finish = finish
        #: the whole text to stream instead of synthetic words (a marker and words after it
        #: if it ends with a space)
        self.script = script
        self.prompt = prompt
        self.output = output
        #: the request's ``max_tokens``: what SGLang's admission reserves for (the simulator
        #: alone knows ``output``)
        self.max_new = max(output, max_new or output)
        self.rng = rng
        self.send = send
        #: KV tokens held now
        self.kv = 0
        #: tokens still to prefill (the prompt; after a retraction, prompt and output so far)
        self.todo = prompt
        self.generated = 0
        self.unsent = 0
        self.cancelled = False

    @property
    def need(self) -> int:
        return self.prompt + self.output

    @property
    def future(self) -> int:
        """Tokens SGLang's admission expects this request may still generate (clipped)."""
        return min(max(0, self.max_new - self.generated), CLIP_MAX_NEW_TOKENS)


class SimEngine:
    """A simulated SGLang-like engine serving ``profile.model`` (see module docs).

    ``admission`` is ``"sglang"`` (optimistic, with retraction) or ``"reserve"`` (a whole
    footprint reserved at admission).
    ``stream_interval`` tokens are sent per chunk (like SGLang's ``--stream-interval``);
    ``mean_output_tokens`` is the mean of the (geometric) output length of requests that do
    not set ``ignore_eos``. Deterministic for a ``seed`` (and for a request's own ``seed``).
    The OpenAI API's ``stop``, ``seed``, ``logprobs``, ``tools`` / ``tool_choice`` (a
    synthetic call; with ``auto``, with probability ``tool_call_probability``),
    ``response_format`` and, with ``reasoning``, ``reasoning_content`` are honoured
    (``sim_api``).
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
        admission: str = "sglang",
        reasoning: bool | None = None,
        tool_call_probability: float = 0.5,
    ) -> None:
        if not 0.0 <= tool_call_probability <= 1.0:
            raise ConfigError(f"tool_call_probability: must be in [0, 1], got "
                              f"{tool_call_probability}")
        if admission not in ADMISSIONS:
            raise ConfigError(f"unknown admission rule {admission!r}; known: "
                              f"{', '.join(ADMISSIONS)}")
        self.profile = profile
        self.admission = admission
        #: answers start with ``reasoning_content`` (a reasoning model; default: the profile's)
        self.reasoning = profile.reasoning if reasoning is None else reasoning
        #: how often a request with ``tools`` and ``tool_choice: auto`` gets a tool call
        self.tool_call_probability = tool_call_probability
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
        self._reserved = 0  # KV reserved by running requests ("reserve" admission)
        self._used = 0  # KV held by running requests
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO  # ("sglang" admission)
        self._wake = trio.Event()
        # where the engine's own schedule stands while it is busy: the next iteration starts
        # when the last one was due to end, not when the host got round to waking the loop
        # (on a busy host the lateness of every wake-up would otherwise add up over a long
        # answer, and the engine would run slower than its profile)
        self._busy_until: float | None = None
        self._healthy = True
        self.completed = 0
        self.generated_tokens = 0
        #: requests retracted (preempted) for lack of KV, since the start
        self.retracted = 0
        #: requests their client abandoned before they finished (their KV freed at once)
        self.aborted = 0

    # ---- Engine protocol --------------------------------------------------------------------
    @property
    def models(self) -> tuple[str, ...]:
        """Model names this engine answers to."""
        return self._models

    def load(self) -> EngineLoad:
        """KV tokens in use over capacity, running and queued requests (instantaneous)."""
        return EngineLoad(
            token_usage=min(1.0, self._used / self.profile.kv_capacity_tokens),
            running=len(self._running), queued=len(self._waiting), healthy=self._healthy)

    def _limit(self, request: CompletionRequest) -> int:
        """The most tokens ``request`` may generate: its ``max_tokens``, else what the KV
        pool leaves after its prompt (SGLang's and vLLM's rule)."""
        if request.max_tokens is not None:
            return request.max_tokens
        return max(1, self.profile.kv_capacity_tokens - request.prompt_tokens() - 1)

    def _asked(self, request: CompletionRequest) -> Asked:
        return Asked.of(request, engine_seed=self.seed, reasoning=self.reasoning,
                        tool_probability=self.tool_call_probability)

    def output_length(self, request: CompletionRequest, asked: Asked | None = None) -> int:
        """How many tokens this engine will generate for ``request`` (deterministic)."""
        limit = self._limit(request)
        if request.ignore_eos:
            return max(1, limit)
        rng = (asked or self._asked(request)).rng("len")
        p = 1.0 / max(1, self.mean_output_tokens)
        n = 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p)) if p < 1 else 1
        return max(1, min(limit, n))

    def _script(self, request: CompletionRequest, asked: Asked) -> str | None:
        """A judge prompt gets a verdict; an answer the request shapes (a tool call, JSON)
        its text; any other answer starts with its quality marker."""
        messages = tuple((m.role, m.content or "") for m in request.messages)
        if is_judge_prompt(messages):
            parts = split_judge_prompt(messages[1][1])
            rng = random.Random(f"{self.seed}:judge:{request.trace}")
            verdict = "abstain" if parts is None else self.quality_model.vote(
                parts[1], parts[2], rng)
            return f"Verdict: {verdict}"
        shaped = asked.script()
        if shaped is not None or not self.quality_markers:
            return shaped
        rng = asked.rng("quality")
        return quality_marker(self.quality_model.answer_quality(self.quality, rng))

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Queue ``request``, stream its tokens as the batching loop produces them."""
        if not self._healthy:
            raise EngineUnavailableError(f"simulated engine {self.profile.name} is down")
        asked = self._asked(request)
        prompt = request.prompt_tokens()
        output = self.output_length(request, asked)
        limit = self._limit(request)
        if prompt + output > self.profile.kv_capacity_tokens:
            raise EngineError(f"request needs {prompt + output} KV tokens; the engine has "
                              f"{self.profile.kv_capacity_tokens}")
        script = self._script(request, asked)
        if script is not None and not script.endswith(" "):
            output = max(1, min(limit, approx_tokens(script)))
        if asked.reasoning:
            output = min(limit, output + REASONING_TOKENS)
        send, receive = trio.open_memory_channel[Chunk | Exception](math.inf)
        req = _Req(prompt, output, asked.rng("text"), send,
                   "length" if output >= limit else "stop", script,
                   # like SGLang, which clips max_new_tokens to what its KV pool could hold
                   max_new=min(limit, self.profile.kv_capacity_tokens - prompt - 1))
        shaper = None if asked.plain else Shaper(
            asked, chat=request.is_chat, prompt_tokens=prompt, output=output,
            model=self._served(request))
        self._waiting.append(req)
        self._wake.set()
        finished = False
        named = False
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, Exception):
                        raise item
                    if shaper is None:
                        # the served model's name travels once, on the first chunk
                        await emit(item if named else replace(item, model=self._served(request)))
                        named = True
                    else:
                        for piece in shaper.shape(item, script):
                            await emit(piece)
                        if shaper.stopped:
                            # the answer reached a stop string: it ends here, its KV freed
                            finished = True
                            self.completed += 1
                            return Usage(prompt, req.generated)
                    if item.finish_reason is not None:
                        finished = True
                        return item.usage or Usage(prompt, req.generated)
            raise EngineError("simulated engine stopped")
        finally:
            if not finished:
                self.aborted += 1
            req.cancelled = True
            self._wake.set()

    def _served(self, request: CompletionRequest) -> str:
        """The name this engine answers ``request`` under."""
        return request.model if request.model in self._models else self._models[0]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The batching loop, advanced by events rather than token by token.

        Iterations that prefill are simulated one by one. Between events (an arrival, a
        completion, a chunk due to be streamed, the KV filling up, the queue's head fitting)
        the batch is fixed, so the iterations of a decode-only stretch are summed in closed
        form and slept in one go; an arrival wakes the loop, which finishes the iteration in
        progress (a real engine admits only at iteration boundaries) and admits it. Same
        timings as one sleep per iteration, a fraction of the work.
        """
        task_status.started()
        while True:
            self._drop_cancelled()
            self._admit()
            if not self._running:
                self._busy_until = None
                self.new_token_ratio = INIT_NEW_TOKEN_RATIO  # SGLang resets it when idle
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            if any(r.todo for r in self._running):
                await self._prefill_step()
            else:
                await self._decode_stretch()
            # finished requests leave now; cancelled ones (and their KV) at the top of the
            # next iteration
            self._running = [r for r in self._running if r.generated < r.output]

    async def _prefill_step(self) -> None:
        cap = self.profile.kv_capacity_tokens
        self._make_room(sum(1 for r in self._running if not r.todo)
                        + min(self.prefill_chunk, sum(r.todo for r in self._running)))
        decoding = [r for r in self._running if not r.todo]
        budget = min(self.prefill_chunk, cap - self._used - len(decoding))
        prefill: list[tuple[_Req, int]] = []
        for r in self._running:
            if r.todo and budget > 0:
                take = min(budget, r.todo)
                prefill.append((r, take))
                budget -= take
        batch_tokens = len(decoding) + sum(t for _, t in prefill)
        end = self._iteration_start() + self.profile.step_seconds(batch_tokens, self._used)
        await trio.sleep_until(end)
        self._busy_until = end
        if decoding:
            self._decay(1)
        for r, take in prefill:
            if r.cancelled:
                continue
            r.todo -= take
            r.kv += take
            self._used += take
            if not r.todo:
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
        self._make_room(len(self._running))
        running = self._running
        b = len(running)
        ctx0 = self._used
        # the next event: a completion, a chunk due (every stream_interval tokens), the KV
        # full, or (optimistic admission) the queue's head fitting
        k = min(min(r.output - r.generated for r in running),
                min(self.stream_interval - r.unsent if r.generated else 1 for r in running),
                (self.profile.kv_capacity_tokens - ctx0) // b)
        k = max(1, k)
        if self._waiting and self.admission == "sglang" and len(running) < self.max_running:
            k = self._head_fits_after(k)
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
        self._decay(k)
        for r in running:
            if not r.cancelled:
                self._advance(r, k)

    # ---- internals --------------------------------------------------------------------------
    def _iteration_start(self) -> float:
        """When the next iteration starts: where the busy engine's schedule stands, unless
        the host fell more than ``MAX_CATCH_UP`` behind it (then from now)."""
        now = trio.current_time()
        if self._busy_until is not None and now - self._busy_until <= MAX_CATCH_UP:
            return self._busy_until
        return now

    def _drop_cancelled(self) -> None:
        self._waiting = [r for r in self._waiting if not r.cancelled]
        keep = []
        for r in self._running:
            if r.cancelled:
                self._free(r)
            else:
                keep.append(r)
        self._running = keep

    def _free(self, r: _Req) -> None:
        """Give back the KV ``r`` holds and reserves (it leaves the running batch)."""
        self._reserved -= r.need
        self._used -= r.kv
        r.kv = 0

    def _decay(self, k: int) -> None:
        """``k`` decode iterations ran without running out of KV (SGLang's ratio decay)."""
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO,
                                   self.new_token_ratio - NEW_TOKEN_RATIO_DECAY * k)

    def _rem_total(self, k: int = 0) -> float:
        """SGLang's ``rem_total_tokens`` after ``k`` more decode iterations of the batch:
        KV neither in use nor reserved for what running requests may still generate."""
        ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY * k)
        future = sum(min(max(0, r.max_new - r.generated - k), CLIP_MAX_NEW_TOKENS)
                     for r in self._running)
        return (self.profile.kv_capacity_tokens - self._used - k * len(self._running)
                - ratio * future)

    def _head_fits_after(self, k: int) -> int:
        """The fewest decode iterations (at most ``k``) after which the queue's head would
        be admitted; ``k`` if it would not be by then."""
        head = self._waiting[0]
        need = head.todo + head.future
        if need >= self._rem_total(k):
            return k
        lo, hi = 1, k
        while lo < hi:
            mid = (lo + hi) // 2
            if need < self._rem_total(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _admit(self) -> None:
        cap = self.profile.kv_capacity_tokens
        if self.admission == "reserve":
            while (self._waiting and len(self._running) < self.max_running
                   and self._reserved + self._waiting[0].need <= cap):
                self._start(self._waiting.pop(0))
            return
        rem = self._rem_total()
        while self._waiting and len(self._running) < self.max_running:
            r = self._waiting[0]
            need = r.todo + r.future  # all of it: admitted in this round, not yet discounted
            if need >= rem and self._running:
                break  # (an idle engine takes any request that fits at all)
            rem -= need
            self._start(self._waiting.pop(0))

    def _start(self, r: _Req) -> None:
        self._reserved += r.need
        self._running.append(r)

    def _make_room(self, need: int) -> None:
        """Retract requests until ``need`` KV tokens are free for the next iteration
        (SGLang's ``retract_decode``: fewest generated tokens first, the longest prompt
        first among equals, until every request left has room for
        ``RETRACT_DECODE_STEPS`` more tokens; never the last one)."""
        cap = self.profile.kv_capacity_tokens
        if cap - self._used >= need:
            return
        order = sorted(self._running, key=lambda r: (r.generated, -r.prompt), reverse=True)
        out: list[_Req] = []
        while len(order) > 1 and (not out or cap - self._used < RETRACT_DECODE_STEPS * len(order)):
            r = order.pop()
            self._free(r)
            r.todo = r.prompt + r.generated  # prefilled again, over prompt and output so far
            out.append(r)
        if not out:
            return
        gone = {id(r) for r in out}
        self._running = [r for r in self._running if id(r) not in gone]
        self._waiting.extend(out)
        self.retracted += len(out)
        self.new_token_ratio = min(1.0, (sum(r.generated for r in order)
                                         + RETRACT_DECODE_STEPS * len(order))
                                   / max(1, sum(r.max_new for r in order)))

    def _advance(self, r: _Req, k: int) -> None:
        """``r`` generated ``k`` more tokens: stream them if a chunk is due (the first token
        at once, then every ``stream_interval`` tokens, and the last)."""
        first = r.generated == 0
        r.generated += k
        r.kv += k
        self._used += k
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
                self._free(r)
                self.completed += 1
            try:
                r.send.send_nowait(chunk)
            except trio.BrokenResourceError:
                r.cancelled = True  # its requester left during this step

    def estimate_completion(self, prompt_tokens: int, output_tokens: int) -> float:
        """Seconds until a new request of this size would finish here, from the engine's
        exact state (an oracle for experiments; real engines do not expose this).

        A fluid model of continuous batching: requests are admitted in order while their
        whole KV footprint fits (the best packing, without retractions, whatever the
        engine's admission rule), every iteration decodes one token of each running
        request, and time jumps from one completion to the next at the current iteration
        time.
        """
        cap = self.profile.kv_capacity_tokens
        chunk = max(1, self.prefill_chunk)
        # (remaining iterations, KV reserved, is the new request)
        running = [(r.output - r.generated + r.todo // chunk, r.need, False)
                   for r in self._running if not r.cancelled]
        queue = [(r.output - r.generated + r.todo // chunk, r.need, False)
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
        """Fail every request in flight and refuse new ones until ``recover()``."""
        self._healthy = False
        err = EngineUnavailableError(f"simulated engine {self.profile.name} crashed")
        for r in self._waiting + self._running:
            with contextlib.suppress(trio.BrokenResourceError):
                r.send.send_nowait(err)
            r.cancelled = True
        self._wake.set()

    def recover(self) -> None:
        """Accept requests again after ``crash()``."""
        self._healthy = True
