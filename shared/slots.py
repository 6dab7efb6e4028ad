"""A counting semaphore in the run table: at most N holders of something, under one ETag.

Admission control needs "at most N runs training" and "at most N endpoints" to hold while any
number of function instances decide at once. A count read from the run records and then acted
on would let two workers both see N-1; so the holders of each limited thing are one entity
(partition ``slots``), changed only by a conditional write: of two workers taking the last
slot, one write wins and the other re-reads a full set.

A holder is never released explicitly (a worker can die before it would): every ``take``
first lets go of the holders that ``holds`` says have no claim any more (their run ended), so
a slot frees by itself once what held it is over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from azure.data.tables import TableClient

PARTITION = "slots"


class Slots:
    def __init__(self, table: TableClient, name: str, attempts: int = 8) -> None:
        self._table = table
        self.name = name
        self._attempts = attempts

    def _read(self) -> tuple[list[str] | None, str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(PARTITION, self.name)
        except ResourceNotFoundError:
            return None, ""
        return list(orjson.loads(entity.get("holders") or "[]")), entity.metadata["etag"]

    def holders(self) -> list[str]:
        return self._read()[0] or []

    def take(self, wanted: Sequence[str], limit: int, holds: Callable[[str], bool]) -> list[str]:
        """Give free slots to ``wanted``, in its order; return the holders after (those of ``wanted`` that got one).

        A holder for which ``holds`` is false is let go first. One already holding keeps its slot.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(self._attempts):
            current, etag = self._read()
            holders = [holder for holder in current or [] if holds(holder)]
            for name in wanted:
                if name not in holders and len(holders) < limit:
                    holders.append(name)
            if holders == (current or []):
                return holders
            entity: dict[str, Any] = {
                "PartitionKey": PARTITION,
                "RowKey": self.name,
                "holders": orjson.dumps(holders).decode(),
            }
            try:
                if current is None:
                    self._table.create_entity(entity)
                else:
                    self._table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
            except (ResourceExistsError, ResourceModifiedError):
                continue
            return holders
        raise RuntimeError(f"slots {self.name}: gave up after {self._attempts} concurrent changes")
