"""A real Azure Table client whose requests are counted, for tests of what a write costs."""

from __future__ import annotations

from typing import Any

_WRITES = ("create_entity", "update_entity", "upsert_entity", "delete_entity")


class CountingTable:
    """The real table client, with its point reads (``get_entity``) and its writes counted."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.reads = 0
        self.writes = 0

    def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return self._table.get_entity(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._table, name)
        if name not in _WRITES:
            return method

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            return method(*args, **kwargs)

        return write
