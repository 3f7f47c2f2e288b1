"""The bounded buffer of unsettled items of one edge stream, in memory or journaled to disk.

Items are serialized protobuf messages keyed by their (strictly increasing) sequence, kept oldest first
until the server settles them. With a ``path`` every change is also written to a SQLite file (WAL,
autocommit), so a device that restarts resends what it had not got acknowledged and continues its
sequence numbers above the last one it ever used.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from pathlib import Path


class BufferFull(Exception):
    """The buffer holds ``capacity`` unsettled items."""


class PendingBuffer:
    """Unsettled items by sequence, oldest first, at most ``capacity`` of them."""

    def __init__(self, capacity: int, path: Path | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._last_sequence = 0
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, payload BLOB)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")
            for sequence, payload in self._db.execute("SELECT seq, payload FROM pending ORDER BY seq"):
                self._items[int(sequence)] = bytes(payload)
            row = self._db.execute("SELECT value FROM meta WHERE name = 'last_sequence'").fetchone()
            self._last_sequence = max([int(row[0]) if row else 0, *self._items])

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sequence: object) -> bool:
        return sequence in self._items

    @property
    def full(self) -> bool:
        """Whether ``add`` would raise ``BufferFull``."""
        return len(self._items) >= self.capacity

    @property
    def last_sequence(self) -> int:
        """The highest sequence ever added (0 when none), across restarts with a path."""
        return self._last_sequence

    def add(self, sequence: int, payload: bytes) -> None:
        """Keep ``payload`` until ``sequence`` is settled; sequences must increase."""
        if sequence <= self._last_sequence:
            raise ValueError(f"sequence {sequence} is not above {self._last_sequence}")
        if self.full:
            raise BufferFull(f"{self.capacity} unsettled items")
        self._items[sequence] = payload
        self._last_sequence = sequence
        if self._db is not None:
            self._db.execute("INSERT INTO pending (seq, payload) VALUES (?, ?)", (sequence, payload))
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('last_sequence', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (sequence,),
            )

    def get(self, sequence: int) -> bytes | None:
        """The payload of an unsettled item."""
        return self._items.get(sequence)

    def sequences(self) -> list[int]:
        """Unsettled sequences, oldest first."""
        return list(self._items)

    def remove(self, sequence: int) -> bool:
        """Forget a settled item; False when it was not here."""
        if self._items.pop(sequence, None) is None:
            return False
        if self._db is not None:
            self._db.execute("DELETE FROM pending WHERE seq = ?", (sequence,))
        return True

    def remove_through(self, sequence: int) -> list[int]:
        """Forget every item up to and including ``sequence``; the sequences removed."""
        removed = []
        for item in list(self._items):
            if item > sequence:
                break
            del self._items[item]
            removed.append(item)
        if removed and self._db is not None:
            self._db.execute("DELETE FROM pending WHERE seq <= ?", (sequence,))
        return removed

    def close(self) -> None:
        """Close the journal (the items stay in it for the next start)."""
        if self._db is not None:
            self._db.close()
            self._db = None
