"""Run records over Azurite's table service: conditional inserts and ETag-guarded updates."""

from __future__ import annotations

import threading

from shared.runs import RunRecord, RunState, RunStore


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
