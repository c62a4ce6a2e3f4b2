"""The block file: an append-only log of the blocks a node accepted.

Each record is ``length (4 bytes, big-endian) | CRC-32 of the payload (4 bytes) | payload``
where the payload is an encoded ``Block``. Every append is
flushed and ``fsync``-ed before it returns, so a block the node announced survives a crash.

Reading back (``BlockStore.load()``): a last record cut short or with a bad checksum is
what a crash in the middle of an append leaves; it is dropped (the file is truncated to the
last good record) and logged, and so is a zero-filled tail (what some file systems leave
after a crash: records are never empty, so zeros are never a record). A bad record
*followed by* good ones is corruption: a
``LedgerCorruptError`` naming the file and offset, never a silent skip.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

from ..errors import LedgerCorruptError

__all__ = ["BlockStore", "VoteRecord"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
#: A record larger than this is damage, not a block.
MAX_RECORD = 64 * 1024 * 1024


class BlockStore:
    """An append-only, checksummed, fsync-ed record file (see the module docs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.dropped_torn_bytes = 0

    def load(self, *, repair: bool = True) -> list[bytes]:
        """Every record's payload, in order; repairs a torn tail (see the module docs).

        With ``repair=False`` a torn tail is only skipped, never truncated: for readers of a
        file a running node may be appending to (``wwwserve ledger``).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerCorruptError(f"{self.path}: cannot read: {exc}") from None
        records: list[bytes] = []
        offset = 0
        while offset < len(data):
            bad = self._bad_record(data, offset)
            if bad is None:
                length, _ = _HEADER.unpack_from(data, offset)
                records.append(data[offset + _HEADER.size: offset + _HEADER.size + length])
                offset += _HEADER.size + length
                continue
            if self._nothing_valid_after(data, offset):
                self.dropped_torn_bytes = len(data) - offset
                if not repair:
                    break
                logger.warning("%s: dropping a torn last record (%d bytes at offset %d: %s)",
                               self.path, len(data) - offset, offset, bad)
                with open(self.path, "r+b") as f:
                    f.truncate(offset)
                    f.flush()
                    os.fsync(f.fileno())
                break
            raise LedgerCorruptError(
                f"{self.path}: damaged record at byte offset {offset} ({bad}) with records "
                "after it; restore the file from a backup or remove it to resync from peers")
        return records

    @staticmethod
    def _bad_record(data: bytes, offset: int) -> str | None:
        if len(data) - offset < _HEADER.size:
            return "cut-off header"
        length, crc = _HEADER.unpack_from(data, offset)
        if length == 0:  # never written: a zero-filled tail (a crash artefact) reads so
            return "empty record"
        if length > MAX_RECORD:
            return f"impossible length {length}"
        end = offset + _HEADER.size + length
        if end > len(data):
            return "cut-off payload"
        if zlib.crc32(data[offset + _HEADER.size:end]) != crc:
            return "checksum mismatch"
        return None

    def _nothing_valid_after(self, data: bytes, offset: int) -> bool:
        """True if no intact record starts anywhere after ``offset`` (a torn tail)."""
        for start in range(offset + 1, len(data) - _HEADER.size + 1):
            if self._bad_record(data, start) is None:
                return False
        return True

    def append(self, payload: bytes) -> None:
        """Append one record and fsync it."""
        if not payload:
            raise ValueError("a block record is never empty")
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(record)
            f.flush()
            os.fsync(f.fileno())

    def size(self) -> int:
        """Bytes on disk."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


class VoteRecord:
    """The last finality vote a node cast, as ``(source height, target height)``, on disk.

    Written (atomically, ``fsync``-ed) *before* the vote leaves the node, so a restarted node
    never casts a vote that conflicts with one it cast before the crash
    (``finality``). A damaged file is an error, never a reset: a reset
    would let the node vote twice.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> tuple[int, int]:
        """The last vote's (source height, target height); (0, 0) if none was cast."""
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return (0, 0)
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerCorruptError(f"{self.path}: cannot read the last vote: {exc}") from None
        parts = text.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise LedgerCorruptError(
                f"{self.path}: expected 'source_height target_height', got {text[:40]!r}")
        return (int(parts[0]), int(parts[1]))

    def save(self, source_height: int, target_height: int) -> None:
        """Record a vote durably (write a temporary file, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{source_height} {target_height}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
