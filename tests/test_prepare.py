"""`python -m shared.cli prepare`: a slice of every split of a Hub-shaped dataset, as JSON Lines, and its upload.

The datasets are built here, in the Hub repository layout (README.md ``configs`` + Parquet under
``data/``), so nothing needs the network; the unreachable-Hub case points ``HF_ENDPOINT`` at a
closed local port.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared import azurite as azurite_mod
from shared.cli import main
from shared.config import get_settings
from shared.prepare import PrepareError, pick_split, rows_for, sample_indices, split_name
from shared.sample_data import conversations
from shared.storage import Storage
from tests import cli_process

SIZES = {"train_sft": 40, "test_sft": 20, "train_gen": 10, "test_gen": 10}


# Datasets --------------------------------------------------------------------------------


def hub_dataset(root: Path, sizes: dict[str, int] = SIZES, shards: int = 2) -> dict[str, list[dict]]:
    """A folder laid out like a Hub dataset repository; returns each split's rows in order.

    Splits of more than 10 rows are sharded (``-00000-of-00002``) with small row groups, so
    counting and reading cross file and row-group boundaries.
    """
    (root / "data").mkdir(parents=True)
    splits = {}
    for seed, (split, size) in enumerate(sizes.items()):
        rows = list(conversations(size, seed=seed))
        parts = shards if size > 10 else 1
        step = -(-size // parts)
        for part in range(parts):
            table = pa.Table.from_pylist(rows[part * step : (part + 1) * step])
            pq.write_table(table, root / "data" / f"{split}-{part:05d}-of-{parts:05d}-abc123.parquet", row_group_size=7)
        splits[split] = rows
    configs = "".join(f"  - split: {split}\n    path: data/{split}-*.parquet\n" for split in sizes)
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{configs}---\n# test\n")
    return splits


def sharegpt_file(path: Path, count: int = 12) -> list[dict]:
    """A JSON Lines file with ``conversations`` instead of ``messages``, no prompt/prompt_id, non-ASCII text."""
    rows = [
        {
            "id": i,
            "conversations": [
                {"role": "system", "content": "Réponds en français."},
                {"role": "user", "content": f"Qu'est-ce qu'un café ☕ n°{i} ?"},
                {"role": "assistant", "content": "Une boisson chaude. ✓"},
            ],
        }
        for i in range(count)
    ]
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return rows


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[str, list[dict]]]:
    root = tmp_path / "ultrachat_200k"
    return root, hub_dataset(root)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``datasets``' lock and cache files out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def prepare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["prepare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def summary(out: str) -> dict[str, list[str]]:
    """The printed table: split -> rows in, rows written, bytes, file."""
    lines = out.splitlines()
    assert lines[1].split() == ["split", "rows", "in", "written", "bytes", "file"], out
    return {cells[0]: cells[1:] for cells in (line.split() for line in lines[2:]) if len(cells) == 5}


def assert_usage_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("ftpilot: error: ") and err.count("\n") == 1, err  # one line, no traceback
    for needle in needles:
        assert needle in err, err


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a real process with a private Hugging Face cache and torch not imported."""
    return cli_process.run_cli(cwd, *args, HF_HOME=str(cwd / "hf-home"), USE_TORCH="0", **env)


# Rows and splits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pc", "expected"),
    [
        ("5", {"train_sft": 2, "test_sft": 1, "train_gen": 1, "test_gen": 1}),  # 0.5 rows -> at least 1
        ("12.5", {"train_sft": 5, "test_sft": 2, "train_gen": 1, "test_gen": 1}),  # 2.5 -> 2, 1.25 -> 1
        ("50", {"train_sft": 20, "test_sft": 10, "train_gen": 5, "test_gen": 5}),
        ("0.01", {"train_sft": 1, "test_sft": 1, "train_gen": 1, "test_gen": 1}),
        ("100", SIZES),
    ],
)
def test_every_split_gets_its_first_rows(source, tmp_path, capsys, pc: str, expected: dict[str, int]) -> None:
    root, splits = source
    out_dir = tmp_path / "out"
    code, out, err = prepare(capsys, "--dataset", str(root), "--download_dir", str(out_dir), "--dataset_split_pc", pc)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{split}.jsonl" for split in SIZES)
    for split, count in expected.items():
        written = read_jsonl(out_dir / f"{split}.jsonl")
        assert written == splits[split][:count]  # the first rows, in order, across shards and row groups
        path = out_dir / f"{split}.jsonl"
        assert summary(out)[split] == [str(SIZES[split]), str(count), f"{path.stat().st_size:,}", str(path)]


def test_rows_for_rounds_down_exactly_and_keeps_at_least_one() -> None:
    assert rows_for(207_865, 5) == 10_393  # ultrachat's train_sft, as the walkthrough's int()
    assert rows_for(10_000, 0.57) == 57  # float arithmetic would give 56
    assert rows_for(100, 29) == 29
    assert rows_for(3, 1) == 1
    assert rows_for(3, 100) == 3
    assert rows_for(0, 50) == 0  # an empty split stays empty


def test_a_seeded_sample_is_repeatable_and_not_the_first_rows(source, tmp_path, capsys) -> None:
    root, splits = source
    args = ["--dataset", str(root), "--dataset-split-pc", "25", "--splits", "train_sft", "--sample"]
    outputs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        code, out, _ = prepare(capsys, *args, "--seed", seed, "--download-dir", str(tmp_path / name))
        assert code == 0
        assert "a random 25% (seed " in out
        outputs[name] = read_jsonl(tmp_path / name / "train_sft.jsonl")
    rows = splits["train_sft"]
    assert outputs["a"] == outputs["b"]
    assert len(outputs["a"]) == 10
    assert outputs["a"] != rows[:10]
    assert outputs["a"] != outputs["c"]
    positions = [rows.index(row) for row in outputs["a"]]
    assert positions == sorted(positions) == sample_indices(40, 10, 7)  # dataset order, the documented draw


def test_sample_without_seed_uses_seed_0(source, tmp_path, capsys) -> None:
    root, splits = source
    code, out, _ = prepare(capsys, "--dataset", str(root), "--download-dir", str(tmp_path / "o"), "--sample")
    assert code == 0 and "(seed 0)" in out
    written = read_jsonl(tmp_path / "o" / "train_sft.jsonl")
    assert written == [splits["train_sft"][i] for i in sample_indices(40, 2, 0)]


def test_splits_restricts_what_is_written(source, tmp_path, capsys) -> None:
    root, splits = source
    out_dir = tmp_path / "out"
    code, out, _ = prepare(
        capsys, "--dataset", str(root), "--download-dir", str(out_dir), "--splits", "test_sft, train_gen"
    )
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["test_sft.jsonl", "train_gen.jsonl"]
    assert list(summary(out)) == ["test_sft", "train_gen"]
    assert read_jsonl(out_dir / "train_gen.jsonl") == splits["train_gen"][:1]


def test_lines_have_exactly_three_keys_in_utf8(tmp_path, capsys) -> None:
    path = tmp_path / "chats.jsonl"
    rows = sharegpt_file(path)
    out_dir = tmp_path / "out"
    code, _, _ = prepare(
        capsys, "--dataset", str(path), "--download-dir", str(out_dir), "--dataset-split-pc", "100",
        "--messages-column", "conversations",
    )  # fmt: skip
    assert code == 0
    raw = (out_dir / "chats.jsonl").read_bytes()  # one split named after the file
    assert "☕".encode() in raw and b"\\u" not in raw  # UTF-8, not ASCII-escaped
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(rows) + 1  # one object per line, newline-terminated
    for line, row in zip(lines, rows, strict=False):
        record = orjson.loads(line)
        assert list(record) == ["prompt", "messages", "prompt_id"]
        assert record["messages"] == row["conversations"]  # roles and contents as given
        assert record["prompt"] == row["conversations"][1]["content"]  # the first *user* message
        assert record["prompt_id"] == hashlib.sha256(record["prompt"].encode()).hexdigest()
        assert orjson.dumps(record) == line  # round-trips byte for byte


def test_a_folder_of_jsonl_files_keeps_one_split_per_file(source, tmp_path, capsys) -> None:
    """Its own output read back: ``train_sft`` and ``train_gen`` stay apart (datasets would merge them)."""
    root, splits = source
    first, second = tmp_path / "first", tmp_path / "second"
    assert prepare(capsys, "--dataset", str(root), "--download-dir", str(first), "--dataset-split-pc", "50")[0] == 0
    code, out, _ = prepare(capsys, "--dataset", str(first), "--download-dir", str(second), "--dataset-split-pc", "50")
    assert code == 0
    assert sorted(p.name for p in second.iterdir()) == sorted(f"{split}.jsonl" for split in SIZES)
    assert read_jsonl(second / "train_gen.jsonl") == splits["train_gen"][:2]
    assert read_jsonl(second / "train_sft.jsonl") == splits["train_sft"][:10]

    code, out, err = prepare(capsys, "--dataset", str(first), "--download-dir", str(first))
    assert_usage_error(code, out, err, "is one of the dataset's own files")
    assert read_jsonl(first / "train_sft.jsonl") == splits["train_sft"][:20]  # untouched


def test_split_names_drop_the_hub_shard_suffix() -> None:
    assert split_name(Path("data/train_sft-00000-of-00003-a3ecf92756993583.parquet")) == "train_sft"
    assert split_name(Path("test.jsonl")) == "test"
    assert split_name(Path("2024-01-01.json")) == "2024-01-01"


@pytest.mark.parametrize(
    "flags",
    [
        ("--download_dir", "--dataset_split_pc", "--dataset_subset"),
        ("--download-dir", "--dataset-split-pc", "--dataset-subset"),
    ],
)
def test_underscore_and_dashed_flags(source, tmp_path, capsys, flags: tuple[str, str, str]) -> None:
    root, splits = source
    out_dir, pc, subset = flags
    args = [out_dir, str(tmp_path / "o"), pc, "50", subset, "default", "--splits", "test_sft"]
    code, _, err = prepare(capsys, "--dataset", str(root), *args)
    assert (code, err) == (0, "")
    assert read_jsonl(tmp_path / "o" / "test_sft.jsonl") == splits["test_sft"][:10]


def test_end_to_end_as_a_process_and_the_output_validates(source, tmp_path) -> None:
    root, splits = source
    started = time.monotonic()
    result = run_cli(
        tmp_path,
        "prepare", "--dataset", str(root), "--download_dir", "ultrachat_200k_dataset", "--dataset_split_pc", "50",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bars or library warnings off a terminal
    assert f"{root}: the first 50% of each split (rounded down, at least 1 row)" in result.stdout
    train = tmp_path / "ultrachat_200k_dataset" / "train_sft.jsonl"
    assert read_jsonl(train) == splits["train_sft"][:20]

    report = run_cli(tmp_path, "validate", str(train), "--json", FTPILOT_MIN_EXAMPLES_WARNING="10")
    assert report.returncode == 0, report.stdout + report.stderr
    document = orjson.loads(report.stdout)
    assert document["valid"] is True and document["examples"] == 20
    assert document["errors"] == [] and document["warnings"] == []
    assert time.monotonic() - started < 60


# Errors ----------------------------------------------------------------------------------


def test_missing_messages_column_names_the_columns(tmp_path, capsys) -> None:
    path = tmp_path / "chats.jsonl"
    sharegpt_file(path)
    code, out, err = prepare(capsys, "--dataset", str(path), "--download-dir", str(tmp_path / "o"))
    assert_usage_error(code, out, err, "no 'messages' column", "(columns: id, conversations)", "--messages-column")
    assert not (tmp_path / "o").exists()

    code, out, err = prepare(
        capsys, "--dataset", str(path), "--download-dir", str(tmp_path / "o"), "--messages-column", "chat"
    )
    assert_usage_error(code, out, err, "no 'chat' column", "(columns: id, conversations)")

    code, _, _ = prepare(
        capsys, "--dataset", str(path), "--download-dir", str(tmp_path / "o"), "--messages-column", "conversations"
    )
    assert code == 0
    assert len(read_jsonl(tmp_path / "o" / "chats.jsonl")) == 1  # 5% of 12, rounded down, at least 1


def test_unknown_split_names_the_available_ones(source, tmp_path, capsys) -> None:
    root, _ = source
    code, out, err = prepare(capsys, "--dataset", str(root), "--download-dir", str(tmp_path / "o"), "--splits", "train")
    assert_usage_error(code, out, err, "unknown split 'train'", "train_sft, test_sft, train_gen, test_gen")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("pc", ["0", "-5", "100.5", "abc", "nan", "inf"])
def test_bad_percentage(source, capsys, pc: str) -> None:
    root, _ = source
    code, out, err = prepare(capsys, "--dataset", str(root), "--dataset_split_pc", pc)
    assert_usage_error(code, out, err, "--dataset_split_pc/--dataset-split-pc")


@pytest.mark.parametrize("missing", ["missing-folder", "./missing", "data/train.jsonl", "~/no/such/folder"])
def test_missing_local_path(tmp_path, capsys, monkeypatch, missing: str) -> None:
    monkeypatch.chdir(tmp_path)
    target = str(tmp_path / missing) if missing == "missing-folder" else missing
    code, out, err = prepare(capsys, "--dataset", target)
    assert_usage_error(code, out, err, f"{target}: no such file or folder")


def test_unknown_config(source, capsys) -> None:
    root, _ = source
    code, out, err = prepare(capsys, "--dataset", str(root), "--dataset_subset", "nope")
    assert_usage_error(code, out, err, "nope")


def test_seed_needs_sample_and_upload_flags_need_upload(source, capsys) -> None:
    root, _ = source
    assert_usage_error(*prepare(capsys, "--dataset", str(root), "--seed", "3"), "--seed needs --sample")
    assert_usage_error(*prepare(capsys, "--dataset", str(root), "--test-split", "x"), "--test-split needs --upload")


def test_an_unreachable_hub_fails_fast_with_the_offline_message(tmp_path) -> None:
    endpoint = f"http://127.0.0.1:{azurite_mod.free_port()}"  # nothing listens there
    started = time.monotonic()
    result = run_cli(tmp_path, "prepare", "--dataset", "HuggingFaceH4/ultrachat_200k", HF_ENDPOINT=endpoint)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "ftpilot: error: cannot reach the Hugging Face Hub for HuggingFaceH4/ultrachat_200k"
    )
    assert (
        "download it elsewhere (`huggingface-cli download --repo-type dataset HuggingFaceH4/ultrachat_200k "
        "--local-dir DIR`) and pass --dataset DIR"
    ) in result.stderr
    assert elapsed < 20
    assert not (tmp_path / "data").exists()


# Upload ----------------------------------------------------------------------------------


def test_pick_split_defaults() -> None:
    ultrachat = ["train_sft", "test_sft", "train_gen", "test_gen"]
    assert pick_split(ultrachat, "train") == "train_sft"
    assert pick_split(ultrachat, "test", train="train_sft") == "test_sft"
    assert pick_split(ultrachat, "test", train="train_gen") == "test_gen"  # named like the train split
    assert pick_split(["train", "test", "train_extra"], "train") == "train"
    assert pick_split(["train", "validation"], "test") is None
    assert pick_split(ultrachat, "train", given="train_gen") == "train_gen"
    with pytest.raises(PrepareError, match=r"several train splits \(train_a, train_b\).*--train-split"):
        pick_split(["train_a", "train_b", "test"], "train")
    with pytest.raises(PrepareError, match="--test-split 'test_x' is not among the prepared splits"):
        pick_split(ultrachat, "test", given="test_x")
    with pytest.raises(PrepareError, match="no split name starts with 'train'"):
        pick_split(["a", "b"], "train")


@pytest.fixture
def uploads(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, set[str]]]:
    """Each upload_blob call: the blob name and the blobs that already existed when it started."""
    from azure.storage.blob import BlobClient

    calls: list[tuple[str, set[str]]] = []
    original = BlobClient.upload_blob

    def observed(self: BlobClient, *args, **kwargs):
        calls.append((self.blob_name, {blob.name for blob in storage.container.list_blobs()}))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BlobClient, "upload_blob", observed)
    return calls


def blob_bytes(storage: Storage, name: str) -> bytes:
    return storage.blob(name).download_blob().readall()


@pytest.mark.usefixtures("cli_env")
def test_upload_puts_the_test_sidecar_first_then_train(source, tmp_path, capsys, storage, uploads) -> None:
    root, _ = source
    out_dir = tmp_path / "ultrachat_200k_dataset"
    code, out, err = prepare(
        capsys, "--dataset", str(root), "--download_dir", str(out_dir), "--dataset_split_pc", "50", "--upload"
    )
    assert (code, err) == (0, "")
    container = storage.settings.intake_container
    assert uploads == [
        ("incoming/ultrachat_200k.test.jsonl", set()),
        ("incoming/ultrachat_200k.jsonl", {"incoming/ultrachat_200k.test.jsonl"}),  # the sidecar was already there
    ]
    assert blob_bytes(storage, "incoming/ultrachat_200k.test.jsonl") == (out_dir / "test_sft.jsonl").read_bytes()
    assert blob_bytes(storage, "incoming/ultrachat_200k.jsonl") == (out_dir / "train_sft.jsonl").read_bytes()
    sidecar = storage.blob("incoming/ultrachat_200k.test.jsonl").get_blob_properties()
    train = storage.blob("incoming/ultrachat_200k.jsonl").get_blob_properties()
    assert sidecar.creation_time <= train.creation_time
    assert train.content_settings.content_type == "application/jsonl"
    assert f"to {container}/incoming/ultrachat_200k.test.jsonl: test split (sidecar, uploaded first)" in out
    assert f"to {container}/incoming/ultrachat_200k.jsonl: train split" in out
    assert out.index("ultrachat_200k.test.jsonl") < out.index("ultrachat_200k.jsonl:")
    assert {b.name for b in storage.container.list_blobs()} == {
        "incoming/ultrachat_200k.test.jsonl",
        "incoming/ultrachat_200k.jsonl",
    }


@pytest.mark.usefixtures("cli_env")
def test_upload_with_chosen_splits_and_name(source, tmp_path, capsys, storage, uploads) -> None:
    root, _ = source
    out_dir = tmp_path / "out"
    code, _, err = prepare(
        capsys, "--dataset", str(root), "--download-dir", str(out_dir), "--upload", "--name", "gen/v1",
        "--train-split", "train_gen", "--test-split", "test_gen", "--max-concurrency", "2",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert [name for name, _ in uploads] == ["incoming/gen/v1.test.jsonl", "incoming/gen/v1.jsonl"]
    assert blob_bytes(storage, "incoming/gen/v1.jsonl") == (out_dir / "train_gen.jsonl").read_bytes()
    assert blob_bytes(storage, "incoming/gen/v1.test.jsonl") == (out_dir / "test_gen.jsonl").read_bytes()


@pytest.mark.usefixtures("cli_env")
def test_upload_refusals(source, tmp_path, capsys, storage, uploads) -> None:
    root, _ = source
    base = ["--dataset", str(root), "--download-dir", str(tmp_path / "o"), "--upload"]
    assert_usage_error(*prepare(capsys, *base, "--name", "../x"), "'..' path segment", "--name")
    assert_usage_error(*prepare(capsys, *base, "--name", "x.test"), "would not be read as a dataset")
    assert_usage_error(*prepare(capsys, *base, "--splits", "test_sft"), "no split name starts with 'train'")
    assert_usage_error(*prepare(capsys, *base, "--test-split", "train_gen", "--splits", "train_sft"), "not among")
    assert not (tmp_path / "o").exists()  # all refused before anything was read

    # Train alone (no test split prepared) next to an old sidecar: intake would test on the old one.
    storage.blob("incoming/ultrachat_200k.test.jsonl").upload_blob(b"old\n")
    uploads.clear()
    assert_usage_error(*prepare(capsys, *base, "--splits", "train_sft"), "ultrachat_200k.test.jsonl exists")
    assert uploads == []


@pytest.mark.slow  # starts a server (and Azurite takes ~10 s to stop once it has served a request)
def test_upload_starts_azurite_when_local_storage_is_down(source, tmp_path, capsys, monkeypatch) -> None:
    from azure.storage.blob import BlobClient

    root, _ = source
    ports = (azurite_mod.free_port(), azurite_mod.free_port(), azurite_mod.free_port())
    for key in [k for k in os.environ if k.startswith("FTPILOT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FTPILOT_STORAGE", azurite_mod.connection_string(*ports))
    monkeypatch.setenv("FTPILOT_DATA_DIR", str(tmp_path / "ftpilot"))
    monkeypatch.chdir(tmp_path)
    stored: dict[str, bytes] = {}
    original = BlobClient.upload_blob

    def upload_and_read_back(self: BlobClient, *args, **kwargs):
        result = original(self, *args, **kwargs)
        stored[self.blob_name] = self.download_blob().readall()  # while the call's Azurite still runs
        return result

    monkeypatch.setattr(BlobClient, "upload_blob", upload_and_read_back)
    get_settings.cache_clear()
    try:
        code, out, err = prepare(capsys, "--dataset", str(root), "--download-dir", "o", "--upload")
    finally:
        get_settings.cache_clear()
    assert (code, err) == (0, ""), err
    assert "to datasets/incoming/ultrachat_200k.jsonl: train split" in out
    assert stored == {
        "incoming/ultrachat_200k.test.jsonl": (tmp_path / "o" / "test_sft.jsonl").read_bytes(),
        "incoming/ultrachat_200k.jsonl": (tmp_path / "o" / "train_sft.jsonl").read_bytes(),
    }
    assert not any(azurite_mod.listening(port) for port in ports)  # started for the call, stopped after it
    assert (tmp_path / "ftpilot" / "azurite").is_dir()  # with its data under FTPILOT_DATA_DIR


@pytest.mark.usefixtures("cli_env")
def test_a_storage_error_is_one_line(source, tmp_path, capsys, monkeypatch) -> None:
    root, _ = source
    monkeypatch.setenv("FTPILOT_INTAKE_CONTAINER", "ab")  # too short for a container name
    get_settings.cache_clear()
    code, out, err = prepare(capsys, "--dataset", str(root), "--download-dir", str(tmp_path / "o"), "--upload")
    assert_usage_error(code, out, err, "cannot reach the intake container in storage: The specified resource name")
    assert err.rstrip().endswith("(OutOfRangeInput)")


def test_hf_hub_offline_skips_the_probe_and_says_the_cache_lacks_it(tmp_path) -> None:
    result = run_cli(tmp_path, "prepare", "--dataset", "HuggingFaceH4/ultrachat_200k", HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in result.stderr
