"""Endpoint leases over Azurite's table service: the sweep's short hold and what a run sees meanwhile."""

from __future__ import annotations

from shared.leases import Grant, Leases
from shared.runs import RunRecord
from tests.counting import CountingTable

ENDPOINT = "ft-chat"


def _run(run_id: str, created_at: str) -> RunRecord:
    return RunRecord(run_id=run_id, dataset="incoming/chat.jsonl", sha256="s", created_at=created_at)


def test_a_hold_lets_go_with_one_write_when_nobody_asked(storage) -> None:
    table = CountingTable(storage.table)
    leases = Leases(table)
    with leases.holding(ENDPOINT, "sweep:a") as held:
        assert held and leases.get(ENDPOINT).holder == "sweep:a"
        reads = table.reads
    assert table.reads == reads  # the release wrote from the hold's own ETag
    assert leases.get(ENDPOINT).holder == ""


def test_a_run_that_asks_during_a_hold_waits_and_is_still_waiting_after(storage) -> None:
    leases = Leases(storage.table)
    run = _run("r1", "2026-12-08T01:00:00+00:00")
    with leases.holding(ENDPOINT, "sweep:a") as held:
        assert held
        assert leases.acquire(ENDPOINT, run) is Grant.WAIT  # the hold's ETag is stale now
    lease = leases.get(ENDPOINT)
    assert (lease.holder, lease.contender) == ("", "r1")
    assert leases.acquire(ENDPOINT, run) is Grant.HELD


def test_an_endpoint_a_run_holds_is_not_held_and_not_let_go(storage) -> None:
    leases = Leases(storage.table)
    leases.acquire(ENDPOINT, _run("r1", "2026-12-08T01:00:00+00:00"))
    with leases.holding(ENDPOINT, "sweep:a") as held:
        assert not held
    assert leases.get(ENDPOINT).holder == "r1"


def test_a_hold_from_the_versions_read_before_needs_no_read(storage) -> None:
    table = CountingTable(storage.table)
    leases = Leases(table)
    leases.acquire("ft-other", _run("r0", "2026-12-08T00:00:00+00:00"))
    versions = leases.versions()
    assert set(versions) == {"ft-other"}
    reads = table.reads
    with leases.holding(ENDPOINT, "sweep:a", known=versions.get(ENDPOINT, (None, ""))) as held:
        assert held  # known to have no lease: created without a read
    assert table.reads == reads
    assert leases.get(ENDPOINT).holder == ""


def test_a_hold_from_a_stale_version_sees_the_run_that_came_since(storage) -> None:
    leases = Leases(storage.table)
    absent = leases.versions().get(ENDPOINT, (None, ""))
    leases.acquire(ENDPOINT, _run("r1", "2026-12-08T01:00:00+00:00"))  # after the sweep read the leases
    with leases.holding(ENDPOINT, "sweep:a", known=absent) as held:
        assert not held
    assert leases.get(ENDPOINT).holder == "r1"

    leases.release(ENDPOINT, "r1")
    stale = leases.versions()[ENDPOINT]
    leases.acquire(ENDPOINT, _run("r2", "2026-12-08T02:00:00+00:00"))
    with leases.holding(ENDPOINT, "sweep:a", known=stale) as held:
        assert not held
    assert leases.get(ENDPOINT).holder == "r2"


def test_a_hold_that_cannot_let_go_leaves_the_block_done_and_the_hold_to_the_reconciler(storage, caplog) -> None:
    table = CountingTable(storage.table)
    leases = Leases(table)
    with leases.holding(ENDPOINT, "sweep:a") as held:
        assert held
        table.refuse = lambda entity: True  # what the block did (a delete, say) is done; only the release fails
    assert leases.get(ENDPOINT).holder == "sweep:a"  # until the reconciler frees it
    assert "sweep:a could not let go (ServiceRequestError" in caplog.text
