"""A real Azure Table client whose requests are counted, and whose writes can be made to fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ServiceRequestError

_WRITES = ("create_entity", "update_entity", "upsert_entity", "delete_entity")


class CountingTable:
    """The real table client, with its point reads (``get_entity``) and its writes counted.

    ``refuse``: a test sets it to fail the writes of the entities it picks, as a storage account
    that cannot be reached for a moment would (the write does not happen).
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self.reads = 0
        self.writes = 0
        self.refuse: Callable[[Any], bool] | None = None

    def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return self._table.get_entity(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._table, name)
        if name not in _WRITES:
            return method

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.refuse is not None and self.refuse(args[0] if args else kwargs.get("entity")):
                raise ServiceRequestError("injected: the table cannot be reached")
            return method(*args, **kwargs)

        return write
