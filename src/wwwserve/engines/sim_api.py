"""The OpenAI API features of the simulated engine: what a request asks, how the answer looks.

``Asked`` reads, from a request's pass-through fields, what the simulated engine honours
besides length and timing: ``stop``, ``seed``, ``logprobs`` / ``top_logprobs``, ``tools`` with
``tool_choice``, ``response_format`` and reasoning (``chat_template_kwargs.enable_thinking``
turns it off). ``Shaper`` turns the engine's raw chunks (synthetic words after a
script) into the answer's chunks: reasoning words first as ``reasoning_content``, the tool
call as streamed ``tool_calls`` deltas, text cut at the first stop string (the text that
could be the start of one is held back until the next chunk, as vLLM and SGLang do), and
logprobs of OpenAI's documented shape (chat: ``{"content": [{token, logprob, bytes,
top_logprobs}]}``; text completions: ``{tokens, token_logprobs, top_logprobs,
text_offset}``).

Everything is deterministic for a request's seed (its ``seed`` field, else the engine's
seed and the request's id).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, replace
from typing import Any

from .base import Chunk, CompletionRequest, Usage

__all__ = ["Asked", "Shaper", "synthetic_value"]

#: most tokens of thought a reasoning answer starts with
REASONING_TOKENS = 32

_ALTERNATIVES = ("the", "a", "of", "to", "and", "is", "we", "so")
_PIECE = re.compile(r"\s*\S+|\s+$")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def synthetic_value(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A value that fits the JSON ``schema`` (its ``type``, ``enum``, ``properties``,
    ``items``), made up deterministically from ``rng``."""
    if not isinstance(schema, dict) or depth > 8:
        return rng.choice(("value", "answer", "result"))
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind is None and isinstance(schema.get("properties"), dict):
        kind = "object"
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {str(k): synthetic_value(v, rng, depth + 1) for k, v in list(props.items())[:32]}
    if kind == "array":
        return [synthetic_value(schema.get("items"), rng, depth + 1)]
    if kind == "integer":
        return rng.randrange(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(("Paris", "blue", "seven", "yes", "the answer"))


@dataclass(frozen=True, slots=True)
class Asked:
    """What a request asks of the simulated engine beyond length and timing."""

    key: str  # what the answer's random draws are keyed by
    seeded: bool = False  # ``key`` comes from the request's own seed
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top alternatives per token, when logprobs are asked for
    tool: dict[str, Any] | None = None  # the function to call: {"name", "parameters"}
    json_schema: dict[str, Any] | None = None  # {} for json_object
    reasoning: bool = False

    @classmethod
    def of(cls, request: CompletionRequest, *, engine_seed: int, reasoning: bool,
           tool_probability: float) -> Asked:
        """Read ``request``'s fields; ``reasoning`` and ``tool_probability`` are the
        engine's (whether it thinks first; how often ``tool_choice: auto`` calls a tool)."""
        extra = request.extra_fields()
        seed = extra.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            # the same seed and prompt give the same answer, whatever the request's id
            digest = hashlib.sha256(request.prompt_text().encode()).hexdigest()[:16]
            key, seeded = f"seed{seed}:{digest}", True
        else:
            key, seeded = request.trace, False
        stop = extra.get("stop")
        stops = (stop,) if isinstance(stop, str) else tuple(
            s for s in stop if isinstance(s, str)) if isinstance(stop, list) else ()
        logprobs: int | None = None
        lp = extra.get("logprobs")
        if request.is_chat and lp is True:
            top = extra.get("top_logprobs")
            logprobs = top if isinstance(top, int) and not isinstance(top, bool) else 0
        elif not request.is_chat and isinstance(lp, int) and not isinstance(lp, bool):
            logprobs = lp
        kwargs = extra.get("chat_template_kwargs")
        thinking = not (isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False)
        fmt = extra.get("response_format")
        schema: dict[str, Any] | None = None
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            schema = {}
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            inner = spec.get("schema") if isinstance(spec, dict) else None
            schema = inner if isinstance(inner, dict) else {}
        return cls(key=key if seeded else f"{engine_seed}:{key}", seeded=seeded,
                   stop=tuple(s for s in stops if s), logprobs=logprobs,
                   tool=_tool_to_call(request, extra, key, tool_probability),
                   json_schema=schema,
                   reasoning=reasoning and thinking and request.is_chat)

    @property
    def plain(self) -> bool:
        """True if the request asks for nothing but text."""
        return not (self.stop or self.logprobs is not None or self.tool is not None
                    or self.json_schema is not None or self.reasoning)

    def rng(self, kind: str) -> random.Random:
        """The random draws of one ``kind`` (``len``, ``text``, ``quality``) of the answer."""
        if self.seeded:
            return random.Random(f"{self.key}:{kind}")
        engine_seed, _, trace = self.key.partition(":")
        return random.Random(f"{engine_seed}:{kind}:{trace}")

    def script(self) -> str | None:
        """The answer's whole text when it is set by the request (a tool call's arguments,
        a JSON document), else None."""
        if self.tool is None and self.json_schema is None:
            return None
        rng = self.rng("script")
        if self.tool is not None:
            return _compact(synthetic_value(self.tool.get("parameters") or {}, rng))
        if self.json_schema is not None:
            schema = self.json_schema or {"type": "object", "properties": {
                "answer": {"type": "string"}}}
            return _compact(synthetic_value(schema, rng))
        return None


def _tool_to_call(request: CompletionRequest, extra: dict[str, Any], key: str,
                  probability: float) -> dict[str, Any] | None:
    tools = extra.get("tools")
    if not request.is_chat or not isinstance(tools, list):
        return None
    functions: list[dict[str, Any]] = [t["function"] for t in tools if isinstance(t, dict)
                 and isinstance(t.get("function"), dict)
                 and isinstance(t["function"].get("name"), str)]
    if not functions:
        return None
    choice = extra.get("tool_choice", "auto")
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        return next((f for f in functions if f["name"] == name), None)
    if choice == "required":
        return functions[0]
    if choice == "auto":
        # a tool's result just came back: answer it in words (the round trip ends)
        if request.messages and request.messages[-1].role == "tool":
            return None
        if random.Random(f"{key}:tool:{request.trace}").random() < probability:
            return functions[0]
    return None


class Shaper:
    """Turns the simulated engine's raw chunks into the answer a request asked for."""

    def __init__(self, asked: Asked, *, chat: bool, prompt_tokens: int, output: int,
                 model: str) -> None:
        self.asked = asked
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.model = model
        #: tokens of thought still to come before the answer
        self.thinking = min(REASONING_TOKENS, output - 1) if asked.reasoning else 0
        self.held_script = ""  # the answer's opening (a marker), held while thinking
        self.pending = ""  # text that may be the start of a stop string
        self.offset = 0  # characters of content sent (text completions' text_offset)
        self.generated = 0
        self.named = False
        self.stopped = False
        self._rng = random.Random(f"{asked.key}:logprobs")
        self._holdback = max((len(s) for s in asked.stop), default=1) - 1

    def shape(self, chunk: Chunk, script: str | None) -> list[Chunk]:
        """The answer's chunks for one raw ``chunk`` (empty while text is held back)."""
        self.generated += chunk.tokens
        out: list[Chunk] = []
        if self.asked.tool is not None:
            out = self._tool_call(chunk)
        else:
            text = chunk.text
            if self.thinking and not self.held_script and script and text.startswith(script):
                self.held_script, text = script, text[len(script):]
            if self.thinking:
                words = _PIECE.findall(text)
                thought, text = "".join(words[:self.thinking]), "".join(words[self.thinking:])
                self.thinking -= min(self.thinking, len(words))
                if thought:
                    out.append(Chunk(text="", tokens=chunk.tokens,
                                     delta=_compact({"reasoning_content": thought})))
                if not self.thinking:
                    text = self.held_script + text.lstrip()
            if text or chunk.finish_reason is not None:
                out.extend(self._content(text, chunk.finish_reason is not None,
                                         0 if out else chunk.tokens))
        if chunk.finish_reason is not None and not self.stopped:
            finish = "tool_calls" if self.asked.tool is not None else chunk.finish_reason
            last = out.pop() if out else Chunk(text="")
            out.append(replace(last, finish_reason=finish, usage=chunk.usage))
        if out and not self.named:
            out[0] = replace(out[0], model=self.model)
            self.named = True
        return out

    def _tool_call(self, chunk: Chunk) -> list[Chunk]:
        if not chunk.text:
            return [Chunk(text="")] if chunk.finish_reason is not None else []
        assert self.asked.tool is not None
        call_id = "call_" + hashlib.sha256(self.asked.key.encode()).hexdigest()[:24]
        head = {"index": 0, "id": call_id, "type": "function",
                "function": {"name": self.asked.tool["name"], "arguments": ""}}
        half = len(chunk.text) // 2
        pieces = [chunk.text[:half], chunk.text[half:]]
        out = [Chunk(text="", tokens=chunk.tokens, delta=_compact({"tool_calls": [head]}))]
        out += [Chunk(text="", delta=_compact({"tool_calls": [
            {"index": 0, "function": {"arguments": p}}]})) for p in pieces if p]
        return out

    def _content(self, text: str, last: bool, tokens: int) -> list[Chunk]:
        """Content ``text``, cut at a stop string (then the answer ends here)."""
        text = self.pending + text
        self.pending = ""
        for stop in self.asked.stop:
            at = text.find(stop)
            if at >= 0:
                self.stopped = True
                out = [self._text_chunk(text[:at], tokens)]
                return [replace(out[0], finish_reason="stop",
                                usage=Usage(self.prompt_tokens, self.generated))]
        if not last and self._holdback:
            keep = min(len(text), self._holdback)
            text, self.pending = text[:len(text) - keep], text[len(text) - keep:]
        if not text and not last:
            return []
        return [self._text_chunk(text, tokens)]

    def _text_chunk(self, text: str, tokens: int) -> Chunk:
        n = self.asked.logprobs
        if n is None or not text:
            self.offset += len(text)
            return Chunk(text=text, tokens=tokens)
        pieces = _PIECE.findall(text)
        entries = []
        for piece in pieces:
            lp = -round(self._rng.expovariate(4.0), 4)
            space = piece[:len(piece) - len(piece.lstrip())]
            alts = [space + a for a in _ALTERNATIVES if space + a != piece][:max(0, n - 1)]
            tops = [(piece, lp)] + [(alt, lp - round(self._rng.uniform(0.5, 4.0), 4))
                                    for alt in alts]
            entries.append((piece, lp, tops[:n] if n else []))
        if self.chat:
            value: Any = {"content": [
                {"token": t, "logprob": lp, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())}
                                  for a, b in tops]} for t, lp, tops in entries],
                "refusal": None}
        else:
            offsets = []
            for piece in pieces:
                offsets.append(self.offset)
                self.offset += len(piece)
            value = {"tokens": [t for t, _, _ in entries],
                     "token_logprobs": [lp for _, lp, _ in entries],
                     "top_logprobs": [dict(tops) for _, _, tops in entries],
                     "text_offset": offsets}
        return Chunk(text=text, tokens=tokens, logprobs=_compact(value))
