"""The one error tree of wwwserve.

Every error wwwserve raises on purpose derives from ``WWWServeError``, so an embedding
application can catch the whole family with one ``except``. Errors are kept apart by cause:
bad input you gave us (``ConfigError``, ``IdentityError``), bad input a peer sent
(``ProtocolError``), a peer or network failing under you (``PeerUnavailableError``),
and using something you already closed (``ClosedError``).
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ClosedError",
    "ConfigError",
    "DeadlineExceededError",
    "DuelError",
    "EngineError",
    "EngineUnavailableError",
    "IdentityError",
    "InvalidBlockError",
    "InvalidTransactionError",
    "InvalidVoteError",
    "LedgerCorruptError",
    "LedgerError",
    "ListenError",
    "ModelNotFoundError",
    "NoCapacityError",
    "OverlayError",
    "PeerUnavailableError",
    "ProtocolError",
    "RemoteError",
    "RequestError",
    "StreamBrokenError",
    "UpstreamError",
    "WWWServeError",
    "leaves",
]


class WWWServeError(Exception):
    """Base class of every error raised by wwwserve."""


class ConfigError(WWWServeError):
    """A configuration file or value is invalid.

    The message names the file, the key path inside it and what is allowed, e.g.
    ``node1.yaml: server_params.accept_frequency: must be a number in [0, 1], got 1.5``.
    """


class IdentityError(WWWServeError):
    """A key file is missing, unreadable or corrupt, or a key or signature is malformed.

    wwwserve never overwrites a key file it could not read: the peer ID is the node's name
    and account, and losing it silently would lose the account.
    """


class ListenError(WWWServeError):
    """A server socket (gateway, sim-engine) could not listen on its address."""


class ProtocolError(WWWServeError):
    """Bytes or a message from the network break the wire protocol.

    Raised by the sans-IO decoders for anything malformed: bad framing, oversized frames,
    invalid msgpack, unknown message types or versions, fields of the wrong type.
    """


class OverlayError(WWWServeError):
    """Base class for failures of the peer-to-peer overlay."""


class PeerUnavailableError(OverlayError):
    """A peer could not be reached, or the connection to it broke under us.

    Raised for failed dials, reset or truncated streams, timeouts waiting for a peer,
    and peers on the other side of a partition.
    """


class RemoteError(OverlayError):
    """The peer was reached but its handler failed or refused the request.

    The peer's handler raised; its message travels back in ``args[0]``.
    """


class ClosedError(WWWServeError):
    """An operation was attempted on something that was already closed by its owner."""


class EngineError(WWWServeError):
    """An inference engine failed a request (HTTP error, bad response, crash mid-stream).

    ``status`` is the engine's HTTP status where it answered with one, ``retry_after`` the
    seconds its ``Retry-After`` asked for (both None otherwise).
    """

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class EngineUnavailableError(EngineError):
    """The engine is down or unhealthy; its models are unavailable until it recovers."""


class LedgerError(WWWServeError):
    """Base class for failures of the credit ledger."""


class InvalidTransactionError(LedgerError):
    """A transaction is rejected: bad signature, overspend, replay, wrong nonce, ...

    The message says which rule it broke. Invalid transactions from the network are dropped
    (and counted); they never change any state.
    """


class InvalidBlockError(LedgerError):
    """A block is rejected: bad signature, wrong parent, ineligible proposer, bad state root,
    an invalid transaction inside, ..."""


class InvalidVoteError(LedgerError):
    """A finality vote is rejected: malformed, badly signed, of another network, or in
    conflict with an earlier vote of the same voter."""


class LedgerCorruptError(LedgerError):
    """The node's block file is damaged somewhere other than a torn last record.

    wwwserve never skips a damaged record silently: the message names the file and byte
    offset, so the operator can restore the file or resync the chain from peers.
    """


class DuelError(WWWServeError):
    """A duel step was refused: a judgement by a non-judge or a party, answers that do not
    match the record, a reveal without a vote, a judge too busy or without an engine."""


class RequestError(WWWServeError):
    """A user's request could not be served. Subclasses map to HTTP statuses in the gateway."""

    status = 500


class BadRequestError(RequestError):
    """The request itself is malformed (bad JSON, wrong field types, out-of-range values)."""

    status = 400


class ModelNotFoundError(RequestError):
    """No node in the network (this one included) serves the requested model."""

    status = 404


class NoCapacityError(RequestError):
    """The model exists but nobody could take the request; retry after ``retry_after`` s."""

    status = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(RequestError):
    """The request's time budget ran out before it completed."""

    status = 504


class UpstreamError(RequestError):
    """The engine that ran the request failed it, and no other engine or peer could serve
    it. The gateway answers with the engine's own verdict: a 429 stays a 429 (with
    ``Retry-After``), anything else is a 502 carrying the engine's message."""

    def __init__(self, message: str, *, status: int = 502,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class StreamBrokenError(RequestError):
    """The executor failed after part of a streamed answer had reached the user.

    Tokens already sent cannot be taken back, so the stream ends with an explicit error
    instead of being retried elsewhere (non-streamed requests are retried).
    """

    status = 502


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception inside ``group`` that is not itself a group, however nested (trio's
    nurseries wrap what their tasks raised, one group per nursery), in order."""
    found: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            found.append(exc)
    return found
