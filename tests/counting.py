"""A real Azure Table client whose reads are counted, for tests of what a write costs."""

from __future__ import annotations

from typing import Any


class CountingTable:
    """The real table client, with its point reads (``get_entity``) counted."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.reads = 0

    def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return self._table.get_entity(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)
