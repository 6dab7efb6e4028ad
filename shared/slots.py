"""A counting semaphore in the run table: at most N holders of something, under one ETag.

Admission control needs "at most N runs training" and "at most N endpoints" to hold while any
number of function instances decide at once. A count read from the run records and then acted
on would let two workers both see N-1; so the holders of each limited thing are one entity
(partition ``slots``), changed only by a conditional write: of two workers taking the last
slot, one write wins and the other re-reads a full set.

A holder is never released explicitly (a worker can die before it would): a ``take`` short of
room, or a ``prune``, first lets go of the holders that ``holds`` says have no claim any more
(their run ended), so a slot frees by itself once what held it is over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from shared.runs import now

if TYPE_CHECKING:
    from azure.data.tables import TableClient

PARTITION = "slots"


class Slots:
    def __init__(self, table: TableClient, name: str, attempts: int = 8) -> None:
        self._table = table
        self.name = name
        self._attempts = attempts

    def _read(self) -> tuple[list[str] | None, dict[str, str], str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(PARTITION, self.name)
        except ResourceNotFoundError:
            return None, {}, ""
        holders = list(orjson.loads(entity.get("holders") or "[]"))
        return holders, dict(orjson.loads(entity.get("granted") or "{}")), entity.metadata["etag"]

    def holders(self) -> list[str]:
        return self._read()[0] or []

    def granted(self) -> tuple[list[str], dict[str, str]]:
        """The holders, and when each got its slot (``shared.runs.now``)."""
        holders, granted, _ = self._read()
        return holders or [], granted

    def take(self, wanted: Sequence[str], limit: int, holds: Callable[[str], bool]) -> tuple[list[str], list[str]]:
        """Give free slots to ``wanted``, in its order; return the holders after, and those this call gave a slot.

        Only when there is not room for all of ``wanted`` are the holders checked, and those for
        which ``holds`` is false let go first: a take with room costs one read and one write,
        however many hold a slot. One already holding keeps its slot (and is not among the given).
        """
        before: list[str] = []

        def decide(holders: list[str]) -> list[str]:
            before[:] = holders
            return self._given(holders, wanted, limit, holds)

        after = self._change(decide)
        return after, [name for name in after if name not in before]

    def release(self, name: str) -> list[str]:
        """Give ``name``'s slot back (it will not use it); return the holders after."""
        return self._change(lambda holders: [holder for holder in holders if holder != name])

    def prune(self, holds: Callable[[str], bool]) -> list[str]:
        """Let go of the holders for which ``holds`` is false; return the holders after."""
        return self._change(lambda holders: [holder for holder in holders if holds(holder)])

    @staticmethod
    def _given(holders: list[str], wanted: Sequence[str], limit: int, holds: Callable[[str], bool]) -> list[str]:
        missing = [name for name in dict.fromkeys(wanted) if name not in holders]
        if len(holders) + len(missing) > limit:  # short of room: free the slots of what has ended
            holders = [holder for holder in holders if holds(holder)]
        return holders + missing[: max(0, limit - len(holders))]

    def _change(self, decide: Callable[[list[str]], list[str]]) -> list[str]:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for _ in range(self._attempts):
            current, granted, etag = self._read()
            holders = decide(list(current or []))
            if holders == (current or []):
                return holders
            granted = {name: granted.get(name) or now() for name in holders}
            row = {
                "PartitionKey": PARTITION,
                "RowKey": self.name,
                "holders": orjson.dumps(holders).decode(),
                "granted": orjson.dumps(granted).decode(),
            }
            try:
                if current is None:
                    self._table.create_entity(row)
                else:
                    self._table.update_entity(
                        row, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
            except (ResourceExistsError, ResourceModifiedError):
                continue
            return holders
        raise RuntimeError(f"slots {self.name}: gave up after {self._attempts} concurrent changes")
