"""The driver for OpenAI-compatible HTTP engines (SGLang, vLLM, ``wwwserve sim-engine``).

Completions go through the official ``openai`` client (``AsyncOpenAI`` runs under trio).
They are streamed from the engine, so tokens can be forwarded as they come and a stalled
engine is noticed, and ``usage`` comes from the engine's final usage chunk; except that a
request its user did not ask to stream, with at most ``unstreamed_max_tokens`` to generate
(a few seconds of decoding), is fetched in one plain response: it arrives whole either
way, and a plain response costs the client about a quarter less CPU than a stream (2.9
against 4.0 ms per tiny request, measured against ``wwwserve sim-engine``).

Load comes from the engine's Prometheus ``/metrics``, parsed by ``prometheus_client``'s
parser (``parse_load()``), scraped every ``scrape_interval`` seconds in ``run()``;
``HTTPEngine.load()`` returns the cached result. An engine that cannot be scraped (down,
erroring) is unhealthy: the dispatcher neither runs nor accepts requests for its model, and
requests in flight on it are cut short with ``EngineUnavailableError`` so they fail
over. An engine started without metrics (``/metrics`` answers 404) is checked through
``/health`` instead and its load is estimated from the requests this driver has in flight.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from .._compat import TaskStatus
from ..errors import (
    BadRequestError,
    ConfigError,
    EngineError,
    EngineUnavailableError,
    ProtocolError,
)
from .base import Chunk, CompletionRequest, Emit, EngineLoad, Usage, approx_tokens

if TYPE_CHECKING:
    import openai

__all__ = ["METRIC_NAMES", "HTTPEngine", "detect_kind", "parse_load", "request_body"]

logger = logging.getLogger(__name__)

#: Per engine kind: (token usage names in order of preference, running, queued).
METRIC_NAMES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "sglang": (("sglang:token_usage",), "sglang:num_running_reqs", "sglang:num_queue_reqs"),
    "vllm": (("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
             "vllm:num_requests_running", "vllm:num_requests_waiting"),
}


def _announces_role(delta: object) -> bool:
    """A chat stream's opening event: the role, with nothing generated yet (no token)."""
    return isinstance(delta, dict) and "role" in delta and not any(
        v for k, v in delta.items() if k != "role")


def detect_kind(text: str) -> str | None:
    """The engine kind whose load metrics a Prometheus exposition ``text`` holds (``sglang``
    or ``vllm``), or None if neither's."""
    for kind, (usage_names, running, queued) in METRIC_NAMES.items():
        if running in text and queued in text and any(n in text for n in usage_names):
            return kind
    return None


def parse_load(text: str, kind: str, model: str | None = None) -> EngineLoad:
    """The load in a Prometheus exposition ``text`` from an engine of ``kind``.

    Series of several ranks or data-parallel replicas are combined: token usage is the
    maximum, running and queued requests are summed. With ``model``, series labelled with
    another ``model_name`` are ignored. Raises ``ProtocolError`` if the text does not
    parse or lacks the engine's metrics.
    """
    try:
        usage_names, running_name, queued_name = METRIC_NAMES[kind]
    except KeyError:
        raise ValueError(f"unknown engine kind {kind!r}; one of {sorted(METRIC_NAMES)}") from None
    values: dict[str, list[float]] = {}
    wanted = {*usage_names, running_name, queued_name}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in wanted:
                    continue
                label = sample.labels.get("model_name")
                if model is not None and label is not None and label != model:
                    continue
                if math.isfinite(sample.value):
                    values.setdefault(sample.name, []).append(sample.value)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ProtocolError(f"unparseable metrics: {exc}") from None
    usage = next((values[n] for n in usage_names if n in values), None)
    missing = [n for n, v in ((usage_names[0], usage), (running_name, values.get(running_name)),
                              (queued_name, values.get(queued_name))) if v is None]
    if missing:
        raise ProtocolError(f"{kind} metrics lack {', '.join(missing)}")
    assert usage is not None
    return EngineLoad(token_usage=min(1.0, max(0.0, max(usage))),
                      running=int(sum(values[running_name])),
                      queued=int(sum(values[queued_name])), healthy=True)


class _OneEvent:
    """A plain (non-streamed) response read like a stream of one event."""

    def __init__(self, event: object) -> None:
        self.event = event

    async def __aenter__(self) -> _OneEvent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def __aiter__(self) -> AsyncIterator[object]:
        yield self.event


class _SlowScrape(EngineUnavailableError):
    """A load scrape that did not finish within ``scrape_timeout``, or whose connection
    broke mid-answer: what a busy engine does, unlike refusing the connection."""


#: slow or broken scrapes in a row after which an engine is marked down (a real vLLM
#: busy with a burst answered /metrics after more than 2 s, and now and then dropped a
#: kept-alive connection unanswered, while it served every request)
SLOW_SCRAPES_DOWN = 3


def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        raise EngineUnavailableError(f"HTTP {resp.status_code} from {resp.request.url}")


def root_url(base_url: str) -> str:
    """An engine's URL without a trailing ``/v1`` (both forms are accepted)."""
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def listed_models(data: object) -> list[str]:
    """The model names in a ``/v1/models`` answer (anything malformed lists none)."""
    listed = data.get("data") if isinstance(data, dict) else None
    if not isinstance(listed, list):
        return []
    return [m["id"] for m in listed
            if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


class HTTPEngine:
    """An OpenAI-compatible engine at ``base_url`` serving ``model`` (see module docs).

    ``kind`` (``sglang`` or ``vllm``) picks the metric names; ``auto`` tells them from the
    first ``/metrics`` read, and an explicit kind that the metrics contradict is a
    ``ConfigError`` from ``run()`` naming ``config_key`` (the config entry, such
    as ``models[0]``). ``served_model`` is the
    engine's own name for the model (vLLM's ``--served-model-name``); without it the
    engine's ``/v1/models`` is asked: ``model`` if it is listed, else the one model listed.
    ``timeout`` bounds one
    request's wall time (the request's own ``timeout`` too); ``connect_timeout`` bounds
    connecting; ``scrape_interval`` is how long a load reading is reused;
    ``unstreamed_max_tokens`` bounds the non-streamed requests fetched in one response.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        kind: str = "auto",
        api_key: str | None = None,
        served_model: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        scrape_interval: float = 0.5,
        scrape_timeout: float = 2.0,
        unstreamed_max_tokens: int = 256,
        config_key: str = "model",
    ) -> None:
        if kind != "auto" and kind not in METRIC_NAMES:
            raise ValueError(f"unknown engine kind {kind!r}; one of auto, "
                             f"{', '.join(sorted(METRIC_NAMES))}")
        self.base_url = root_url(base_url)
        self.model = model
        self.served_model = served_model or model
        #: the engine's kind: ``auto`` until the first /metrics read tells
        self.kind = kind
        self.config_key = config_key
        self._discover = served_model is None
        self.timeout = timeout
        self.scrape_interval = scrape_interval
        self.scrape_timeout = scrape_timeout
        self.unstreamed_max_tokens = unstreamed_max_tokens
        # imported here, not at the top: the openai package takes a third of a second to
        # import, which every node and CLI command would pay even without an HTTP engine
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self.base_url + "/v1", api_key=api_key or "EMPTY", max_retries=0,
            timeout=openai.Timeout(timeout, connect=connect_timeout))
        # load scrapes go through a bare HTTP client: the OpenAI client's request machinery
        # costs ~10x more CPU per call, and a node scrapes every engine several times a second
        self._scraper = httpx.AsyncClient(
            timeout=httpx.Timeout(scrape_timeout, connect=connect_timeout),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None)
        self._load = EngineLoad(healthy=False)
        self._has_metrics = True
        self._inflight: set[trio.CancelScope] = set()
        self._closed = False
        self.scrapes = 0
        self.scrape_failures = 0
        self._slow_scrapes = 0

    # ---- Engine protocol --------------------------------------------------------------------
    @property
    def models(self) -> tuple[str, ...]:
        """The one model this engine serves."""
        return (self.model,)

    @property
    def in_flight(self) -> int:
        """How many requests this driver has open at the engine now."""
        return len(self._inflight)

    def load(self) -> EngineLoad:
        """The last scraped load (unhealthy until the first successful scrape)."""
        if not self._has_metrics and self._load.healthy:
            n = len(self._inflight)
            return EngineLoad(token_usage=0.0, running=n, queued=0, healthy=True)
        return self._load

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Stream ``request`` from the engine into ``emit``."""
        if not self._load.healthy or self._closed:
            raise EngineUnavailableError(f"engine at {self.base_url} is unavailable")
        scope = trio.CancelScope()
        self._inflight.add(scope)
        try:
            with scope:
                return await self._generate(request, emit)
            raise EngineUnavailableError(f"engine at {self.base_url} went down mid-request")
        finally:
            self._inflight.discard(scope)

    async def _generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        import openai  # (loaded by __init__)

        # the client's generic post with plain dicts: no request-model transforms and no
        # pydantic models per streamed event (they cost more CPU than the rest of a hop)
        streamed = request.stream or request.planned_tokens > self.unstreamed_max_tokens
        body = request_body(request, self.served_model, streamed=streamed)
        _check_encodable(body)
        path = "/chat/completions" if request.is_chat else "/completions"
        finish: str | None = None
        usage: Usage | None = None
        generated = pending = 0
        model = fingerprint = ""
        named = False
        # streamed events carry a "delta" per choice, a plain chat answer a "message"
        key = ("delta" if streamed else "message") if request.is_chat else None
        options: Any = {"timeout": min(self.timeout, request.timeout)}
        if _TRACE_RE.match(request.trace):  # (a peer's trace id is checked before a header)
            options["headers"] = {"X-Request-Id": request.trace}
        try:
            if streamed:
                events: Any = await self._client.post(
                    path, body=body, cast_to=object, stream=True,
                    stream_cls=openai.AsyncStream[object], options=options)
            else:
                events = _OneEvent(await self._client.post(path, body=body, cast_to=object,
                                                      options=options))
            async with events:
                async for event in events:
                    if not isinstance(event, dict):
                        raise EngineError(f"engine at {self.base_url} sent a malformed event")
                    u = event.get("usage")
                    if isinstance(u, dict):
                        usage = Usage(int(u.get("prompt_tokens") or 0),
                                      int(u.get("completion_tokens") or 0))
                    if isinstance(event.get("model"), str):
                        model = event["model"]
                    if isinstance(event.get("system_fingerprint"), str):
                        fingerprint = event["system_fingerprint"]
                    for choice in event.get("choices") or ():
                        chunk = _chunk_of(choice, key)
                        if streamed and choice.get("finish_reason") is None \
                                and not _announces_role(choice.get(key)):
                            # one streamed event, one token, even one that decodes to no
                            # text (counted with the next chunk that has something)
                            pending += 1
                        if chunk.text or chunk.delta or chunk.logprobs:
                            # a plain answer is all its tokens (estimated without usage)
                            n = pending if streamed else (usage.completion_tokens if usage
                                                          else approx_tokens(chunk.text))
                            pending = 0
                            generated += n
                            # the served model's name travels once, on the first chunk
                            await emit(dataclasses.replace(
                                chunk, tokens=n, model="" if named else model,
                                fingerprint="" if named else fingerprint))
                            named = True
                        if choice.get("finish_reason") is not None:
                            finish = str(choice["finish_reason"])
        except openai.APIStatusError as exc:
            if _refused(exc.status_code):
                raise BadRequestError(f"engine refused the request: {_message(exc)}") from None
            raise EngineError(f"engine answered {exc.status_code}: {_message(exc)}",
                              status=exc.status_code,
                              retry_after=_retry_after(exc.response.headers)) from None
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            self._mark_down(f"{type(exc).__name__}: {exc}")
            raise EngineUnavailableError(f"engine at {self.base_url}: {exc}") from None
        except openai.APIError as exc:
            # an error event inside the stream, after the engine had answered 200: SGLang
            # and vLLM put the status in the error's "code"
            body = exc.body if isinstance(exc.body, dict) else {}
            code = body.get("code")
            if isinstance(code, int) and _refused(code):
                raise BadRequestError(f"engine refused the request: {exc.message}") from None
            raise EngineError(f"engine error in its stream (code {code}): {exc.message}",
                              status=code if isinstance(code, int) else None) from None
        except openai.OpenAIError as exc:
            raise EngineError(f"engine at {self.base_url}: {exc}") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise EngineError(f"engine at {self.base_url} sent a malformed event: {exc}"
                              ) from None
        if finish is None:
            raise EngineError(f"engine at {self.base_url} ended the stream without finishing")
        if usage is None:
            usage = Usage(request.prompt_tokens(), generated + pending)
        # the engine's count is the truth: the last chunk carries what the others did not
        await emit(Chunk(text="", tokens=max(0, usage.completion_tokens - generated),
                         finish_reason=finish, usage=usage,
                         model="" if named else model,
                         fingerprint="" if named else fingerprint))
        return usage

    def _mark_down(self, why: str) -> None:
        if self._load.healthy or self.scrapes == 1:
            logger.warning("engine %s (%s) is unavailable: %s", self.base_url, self.model, why)
        self._load = EngineLoad(healthy=False)
        for scope in list(self._inflight):
            scope.cancel()

    async def scrape(self) -> EngineLoad:
        """Read the engine's load now (``/metrics``, or ``/health`` without metrics)."""
        self.scrapes += 1
        try:
            with trio.fail_after(self.scrape_timeout):
                if self._has_metrics:
                    resp = await self._scraper.get(self.base_url + "/metrics")
                    if resp.status_code != 404:
                        _check(resp)
                        return self._parse(resp.text)
                    logger.warning("engine %s has no /metrics (start it with metrics "
                                   "enabled); using /health", self.base_url)
                    self._has_metrics = False
                _check(await self._scraper.get(self.base_url + "/health"))
                return EngineLoad(running=len(self._inflight))
        except trio.TooSlowError:
            raise _SlowScrape(f"metrics scrape timed out ({self.scrape_timeout:g} s)") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nobody there: down
            raise EngineUnavailableError(f"{type(exc).__name__}: {exc}") from None
        except httpx.TransportError as exc:  # a connection that broke while answering
            raise _SlowScrape(f"{type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(f"{type(exc).__name__}: {exc}") from None

    def _parse(self, text: str) -> EngineLoad:
        """The load in a /metrics ``text``, telling (``auto``) or checking the kind."""
        found = detect_kind(text)
        if self.kind == "auto":
            if found is None:
                raise ProtocolError(f"the engine at {self.base_url} exports neither SGLang's "
                                    "nor vLLM's load metrics")
            logger.info("engine %s is %s (from its metrics)", self.base_url, found)
            self.kind = found
        elif found is not None and found != self.kind:
            raise ConfigError(
                f"{self.config_key}.engine: {self.kind} is configured, but the engine at "
                f"{self.base_url} exports {found}'s metrics; set engine: {found} (or auto)")
        return parse_load(text, self.kind, self.served_model)

    async def _discover_name(self) -> None:
        """The engine's name for the model, from its ``/v1/models`` (asked until the engine
        answers; an engine without the list keeps the configured name)."""
        try:
            with trio.fail_after(self.scrape_timeout):
                resp = await self._scraper.get(self.base_url + "/v1/models")
        except (trio.TooSlowError, httpx.HTTPError):
            return  # down: asked again at the next refresh
        self._discover = False
        try:
            names = listed_models(resp.json()) if resp.status_code == 200 else []
        except ValueError:
            return  # no list to go by: the configured name it is
        if not names or self.model in names:
            return
        if len(names) == 1:
            logger.info("engine %s serves %s as %r (its /v1/models)", self.base_url,
                        self.model, names[0])
            self.served_model = names[0]
            return
        raise ConfigError(
            f"{self.config_key}.served_model_name: the engine at {self.base_url} serves "
            f"{', '.join(sorted(names)[:8])}, not {self.model!r}; say which one")

    async def _refresh(self) -> None:
        if self._discover:
            await self._discover_name()
        try:
            load = await self.scrape()
        except _SlowScrape as exc:
            # a busy engine is slow to answer /metrics: its last reading stands a while
            # (marking it down would cancel every request it is serving)
            self.scrape_failures += 1
            self._slow_scrapes += 1
            if self._slow_scrapes >= SLOW_SCRAPES_DOWN or not self._load.healthy:
                self._mark_down(f"{exc}, {self._slow_scrapes} in a row")
        except (EngineError, ProtocolError) as exc:
            self.scrape_failures += 1
            self._mark_down(str(exc))
        else:
            self._slow_scrapes = 0
            if not self._load.healthy:
                logger.info("engine %s (%s) is available", self.base_url, self.model)
            self._load = load

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scrape the engine's load every ``scrape_interval`` until cancelled."""
        try:
            await self._refresh()
            task_status.started()
            while True:
                await trio.sleep(self.scrape_interval)
                await self._refresh()
        finally:
            self._closed = True
            self._load = EngineLoad(healthy=False)
            with trio.CancelScope(shield=True):
                await self._client.close()
                await self._scraper.aclose()


def request_body(request: CompletionRequest, model: str, *, streamed: bool) -> dict[str, Any]:
    """The JSON body that asks an OpenAI-compatible engine for ``request`` as ``model``:
    its pass-through fields as they came, then the fields wwwserve acts on (only those the
    request sets: nothing is injected)."""
    body: dict[str, Any] = request.extra_fields()
    body["model"] = model
    body["stream"] = streamed
    if streamed:
        body["stream_options"] = {"include_usage": True}
    for name in ("max_tokens", "temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.ignore_eos:
        body["ignore_eos"] = True
    if request.is_chat:
        body["messages"] = [m.fields() for m in request.messages]
    else:
        body["prompt"] = request.prompt or ""
    return body


def _chunk_of(choice: Any, key: str | None) -> Chunk:
    """One choice of an engine's event as a chunk: its text, its other delta (or message)
    fields and its logprobs, unchanged."""
    if not isinstance(choice, dict):
        raise TypeError("a choice is not an object")
    part = choice.get(key) or {} if key else choice
    if not isinstance(part, dict):
        raise TypeError(f"{key} is not an object")
    text = part.get("content" if key else "text") or ""
    if not isinstance(text, str):
        raise TypeError("non-text content")
    delta = ""
    if key:
        others = {k: v for k, v in part.items() if k not in ("role", "content")
                  and v is not None}
        if others:
            delta = json.dumps(others, separators=(",", ":"))
    logprobs = choice.get("logprobs")
    return Chunk(text=text, delta=delta,
                 logprobs="" if logprobs is None else json.dumps(logprobs,
                                                                separators=(",", ":")))


def _refused(status: int) -> bool:
    """Whether an engine's error status puts the fault in the request (the user's to fix,
    no use retrying elsewhere): a 4xx other than timeout and rate limit."""
    return 400 <= status < 500 and status not in (408, 429)


_TRACE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _check_encodable(body: dict[str, Any]) -> None:
    """Raise ``BadRequestError`` if ``body`` cannot be sent as UTF-8 JSON (a lone
    surrogate such as ``"\\ud800"`` in a message): the request's own fault, the same on
    every engine, so not worth a retry anywhere."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequestError(f"the request's text is not valid Unicode ({exc.reason} at "
                              f"position {exc.start})") from None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds an engine's ``Retry-After`` header asks for (delta-seconds form; an HTTP
    date or a malformed value is ignored), capped at an hour."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(3600.0, seconds) if math.isfinite(seconds) and seconds >= 0 else None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return str(exc.message)

