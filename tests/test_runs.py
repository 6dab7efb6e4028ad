"""Run records over Azurite's table service: conditional inserts and ETag-guarded updates."""

from __future__ import annotations

import threading
from dataclasses import replace

from shared.runs import RunRecord, RunState, RunStore
from tests.counting import CountingTable


def test_claim_creates_once(storage) -> None:
    store = RunStore(storage.table)
    record = RunRecord(run_id="r1", dataset="incoming/a.jsonl", sha256="abc").moved(RunState.RECEIVED)
    stored, created = store.claim(record)
    assert created and stored == record
    again, created_again = store.claim(RunRecord(run_id="r1", dataset="incoming/b.jsonl", sha256="abc"))
    assert not created_again
    assert again.dataset == "incoming/a.jsonl"
    assert store.get("r1") == record


def test_round_trip_keeps_types(storage) -> None:
    store = RunStore(storage.table)
    record = RunRecord(
        run_id="r2",
        dataset="incoming/ünïcode.jsonl",
        sha256="abc",
        parameters={"num_train_epochs": 1, "learning_rate": 5e-6, "apply_lora": "true"},
        metrics={"eval_loss": 1.25},
        duplicates=["incoming/x.jsonl"],
    ).moved(RunState.SUBMITTED, "job ftpilot-r2")
    store.claim(record)
    loaded = store.get("r2")
    assert loaded == record
    assert loaded.state is RunState.SUBMITTED
    assert loaded.parameters["learning_rate"] == 5e-6


def test_concurrent_updates_never_overwrite_each_other(storage) -> None:
    """Twelve writers append at once; with ETags every append survives."""
    store = RunStore(storage.table, attempts=50)
    store.claim(RunRecord(run_id="r3", dataset="d", sha256="s"))
    barrier = threading.Barrier(12)

    def append(i: int) -> None:
        barrier.wait()
        store.update("r3", lambda r: r.moved(r.state, duplicates=[*r.duplicates, f"upload-{i}"]))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(store.get("r3").duplicates) == sorted(f"upload-{i}" for i in range(12))


def test_update_that_decides_nothing_writes_nothing(storage) -> None:
    store = RunStore(storage.table)
    store.claim(RunRecord(run_id="r4", dataset="d", sha256="s"))
    before = storage.table.get_entity("run", "r4").metadata["etag"]
    store.update("r4", lambda r: None)
    assert storage.table.get_entity("run", "r4").metadata["etag"] == before


def test_history_is_capped(storage) -> None:
    record = RunRecord(run_id="r5", dataset="d", sha256="s")
    for i in range(100):
        record = record.moved(RunState.TRAINING, f"step {i}")
    assert len(record.history) == 40
    assert record.history[-1]["note"] == "step 99"


def test_an_update_from_a_known_version_writes_without_reading(storage) -> None:
    table = CountingTable(storage.table)
    store = RunStore(table)
    store.claim(RunRecord(run_id="r6", dataset="d", sha256="s"))
    (known,) = [(record, etag) for record, etag in store.versions() if record.run_id == "r6"]

    updated = store.update("r6", lambda r: r.moved(RunState.RECEIVED), known=known)
    assert table.reads == 0
    assert store.get("r6") == updated and updated.state is RunState.RECEIVED


def test_an_update_from_a_stale_version_reads_and_decides_again(storage) -> None:
    table = CountingTable(storage.table)
    store = RunStore(table)
    store.claim(RunRecord(run_id="r7", dataset="d", sha256="s"))
    (stale,) = [(record, etag) for record, etag in store.versions() if record.run_id == "r7"]
    store.update("r7", lambda r: r.moved(r.state, duplicates=["incoming/first.jsonl"]))  # moved on meanwhile

    seen: list[list[str]] = []

    def append(record: RunRecord) -> RunRecord:
        seen.append(record.duplicates)
        return record.moved(record.state, duplicates=[*record.duplicates, "incoming/second.jsonl"])

    assert store.update("r7", append, known=stale).duplicates == ["incoming/first.jsonl", "incoming/second.jsonl"]
    assert seen == [[], ["incoming/first.jsonl"]]  # the stale write failed on its ETag; the fresh one won
    assert store.get("r7").duplicates == ["incoming/first.jsonl", "incoming/second.jsonl"]


def test_nothing_to_do_on_a_known_version_is_checked_on_a_fresh_read(storage) -> None:
    store = RunStore(storage.table)
    store.claim(RunRecord(run_id="r8", dataset="d", sha256="s"))
    (stale,) = [(record, etag) for record, etag in store.versions() if record.run_id == "r8"]
    store.update("r8", lambda r: r.moved(r.state, duplicates=["incoming/again.jsonl"]))

    # Decided on the stale record, nothing needs doing; on the current one, something does.
    def note_duplicates(record: RunRecord) -> RunRecord | None:
        return replace(record, sweep_note="has duplicates") if record.duplicates else None

    assert store.update("r8", note_duplicates, known=stale).sweep_note == "has duplicates"
    assert store.get("r8").sweep_note == "has duplicates"


def test_an_update_returns_the_version_it_wrote_for_the_next_write(storage) -> None:
    table = CountingTable(storage.table)
    store = RunStore(table)
    store.claim(RunRecord(run_id="r9", dataset="d", sha256="s", endpoint="ft-a"))
    store.claim(RunRecord(run_id="r10", dataset="d", sha256="s", endpoint="ft-b"))
    (known,) = store.versions(endpoint="ft-a")  # one filtered query
    assert known[0].run_id == "r9"
    writes = table.writes

    first = store.update_version("r9", lambda r: replace(r, sweep_note="deleting"), known=known)
    second = store.update_version("r9", lambda r: replace(r, sweep_note="deleted"), known=first)
    assert (table.reads, table.writes - writes) == (0, 2)  # the second wrote from the first's ETag
    assert store.get("r9") == second[0] and second[0].sweep_note == "deleted"
