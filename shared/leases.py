"""One rollout per endpoint at a time: an ETag-guarded lease record per endpoint.

A run holds its endpoint's lease from the moment it starts deploying until it is live or has
unwound what it built, so only one run at a time changes an endpoint's deployments or
traffic. The newest upload wins: a run that asks while an older one holds the lease is noted
as the contender (the holder sees it on its next step and steps aside); a run older than the
holder, the contender or the endpoint's champion (the newest run that went live there) is
overtaken and ends ``superseded``.

The record lives in the run table (its own partition), so it costs no other resource and
shares the table's conditional writes: every change is a read-modify-write on the ETag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.runs import now, versions_to_try

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.runs import RunRecord

log = logging.getLogger(__name__)

PARTITION = "lease"


def order(record: RunRecord) -> str:
    """Which upload is newer: later records sort higher (the run id breaks a tie in the same second)."""
    return f"{record.created_at}|{record.run_id}"


class Grant(StrEnum):
    HELD = "held"  # the run holds the lease: it may change the endpoint
    WAIT = "wait"  # an older run holds it and has been told to step aside; ask again later
    OVERTAKEN = "overtaken"  # a newer run holds, awaits or won the endpoint: this one is superseded


@dataclass(frozen=True)
class Lease:
    endpoint: str
    holder: str = ""
    holder_order: str = ""
    contender: str = ""
    contender_order: str = ""
    champion: str = ""
    champion_order: str = ""
    since: str = ""  # when the holder took it

    def newest_order(self) -> str:
        return max(self.holder_order, self.contender_order, self.champion_order)

    def newer_than(self, record: RunRecord) -> str:
        """The run newer than ``record`` that wants, holds or won this endpoint, or ''."""
        mine = order(record)
        for run_id, theirs in (
            (self.contender, self.contender_order),
            (self.champion, self.champion_order),
            (self.holder, self.holder_order),
        ):
            if run_id and run_id != record.run_id and theirs > mine:
                return run_id
        return ""

    def champion_newer_than(self, record: RunRecord) -> str:
        """The id of a newer run that went live on this endpoint, or ''."""
        return self.champion if self.champion_order > order(record) else ""


# A lease as read or written, with its ETag; (None, "") for an endpoint known to have none.
LeaseVersion = tuple[Lease | None, str]


class Leases:
    def __init__(self, table: TableClient, attempts: int = 8) -> None:
        self._table = table
        self._attempts = attempts

    def get(self, endpoint: str) -> Lease | None:
        return self._read(endpoint)[0]

    def _read(self, endpoint: str) -> tuple[Lease | None, str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(PARTITION, endpoint)
        except ResourceNotFoundError:
            return None, ""
        return _lease_of(entity), entity.metadata["etag"]

    def _change(
        self,
        endpoint: str,
        decide: Callable[[Lease | None], Lease | None],
        known: LeaseVersion | None = None,
    ) -> tuple[Lease, str]:
        """Apply ``decide(current or None) -> new Lease | None`` under the record's ETag; the lease and its ETag.

        ``known``: the lease and ETag as this process read or wrote them. The first try decides
        on them without reading, as ``RunStore.update`` does with a known record: a stale ETag
        fails the write (a lease known to be absent, the create) and the next try reads.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
        from azure.data.tables import UpdateMode

        for current, etag, optimistic in versions_to_try(lambda: self._read(endpoint), self._attempts, known):
            new = decide(current)
            if new is None or new == current:
                if optimistic:
                    continue  # decided on what may be stale: read and decide again
                return current or Lease(endpoint), etag
            entity = {"PartitionKey": PARTITION, "RowKey": endpoint, **asdict(new)}
            entity.pop("endpoint")
            try:
                if current is None:
                    written = self._table.create_entity(entity)
                else:
                    written = self._table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                    )
            except (ResourceExistsError, ResourceModifiedError):
                continue
            return new, written["etag"]
        raise RuntimeError(f"lease on {endpoint}: gave up after {self._attempts} concurrent changes")

    def acquire(self, endpoint: str, record: RunRecord) -> Grant:
        """Take the endpoint for ``record``, queue behind an older holder, or learn it was overtaken."""
        return self.claim(endpoint, record)[0]

    def claim(self, endpoint: str, record: RunRecord) -> tuple[Grant, Lease]:
        """``acquire``, with the lease as it stands after the claim (who holds it, who is newer)."""
        mine = order(record)

        def decide(lease: Lease | None) -> Lease | None:
            lease = lease or Lease(endpoint)
            if lease.holder == record.run_id or mine < lease.newest_order():
                return None
            if not lease.holder:
                return replace(
                    lease, holder=record.run_id, holder_order=mine, contender="", contender_order="", since=now()
                )
            return replace(lease, contender=record.run_id, contender_order=mine)

        lease, _ = self._change(endpoint, decide)
        if lease.holder == record.run_id:
            return Grant.HELD, lease
        if lease.contender == record.run_id:
            log.info("lease %s: run %s waits for run %s to step aside", endpoint, record.run_id, lease.holder)
            return Grant.WAIT, lease
        return Grant.OVERTAKEN, lease

    @contextmanager
    def holding(self, endpoint: str, holder: str, *, known: LeaseVersion | None = None) -> Iterator[bool]:
        """Hold a free endpoint for something other than a run (the idle sweep deleting it) while the block runs.

        Such a holder has no upload order, so every run that asks becomes the contender and
        waits until it lets go. ``known``: the lease as the caller read it (``versions``), to
        take it without a read. Letting go starts from the lease as the hold wrote it: one
        write, not a read and a write, unless a run asked for the endpoint meanwhile. A failure to
        let go is logged, not raised: what the block did stands, and the reconciler frees a hold
        older than its limit (``shared.reconcile.SWEEP_LEASE_S``).
        """

        def decide(lease: Lease | None) -> Lease | None:
            lease = lease or Lease(endpoint)
            if lease.holder or lease.contender:
                return None
            return replace(lease, holder=holder, holder_order="", since=now())

        lease, etag = self._change(endpoint, decide, known=known)
        held = lease.holder == holder
        try:
            yield held
        finally:
            if held:
                try:
                    self._change(endpoint, _releasing(holder), known=(lease, etag))
                except Exception as error:
                    log.warning("lease %s: %s could not let go (%s: %s)", endpoint, holder, type(error).__name__, error)

    def release(self, endpoint: str, run_id: str, *, champion: RunRecord | None = None) -> None:
        """Give the endpoint up: a no-op unless ``run_id`` holds it or waits for it.

        ``champion``: the run that went live there, which every older run now loses to.
        """
        self._change(endpoint, _releasing(run_id, champion))

    def versions(self) -> dict[str, LeaseVersion]:
        """Every endpoint's lease with its ETag, by endpoint (one query), for ``holding(..., known=)``."""
        entities = self._table.query_entities(f"PartitionKey eq '{PARTITION}'")
        return {entity["RowKey"]: (_lease_of(entity), entity.metadata["etag"]) for entity in entities}

    def taken(self) -> list[Lease]:
        """The leases someone holds or waits for (the table filters them: free ones are most of them)."""
        query = f"PartitionKey eq '{PARTITION}' and (holder ne '' or contender ne '')"
        return [_lease_of(entity) for entity in self._table.query_entities(query)]


def _releasing(run_id: str, champion: RunRecord | None = None) -> Callable[[Lease | None], Lease | None]:
    """The change that lets ``run_id`` go (as holder or contender) and notes ``champion``."""

    def decide(lease: Lease | None) -> Lease | None:
        if lease is None:
            return None
        changed = lease
        if champion is not None and order(champion) > lease.champion_order:
            changed = replace(changed, champion=champion.run_id, champion_order=order(champion))
        if lease.holder == run_id:
            changed = replace(changed, holder="", holder_order="", since="")
        if lease.contender == run_id:
            changed = replace(changed, contender="", contender_order="")
        return changed

    return decide


def _lease_of(entity: dict[str, Any]) -> Lease:
    known = set(Lease.__dataclass_fields__) - {"endpoint"}
    return Lease(endpoint=entity["RowKey"], **{k: str(v) for k, v in entity.items() if k in known})
