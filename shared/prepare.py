"""Prepare a chat dataset for ftpilot: a slice of every split of a Hugging Face dataset, as JSON Lines.

The Azure ML walkthrough starts with ``download-dataset.py``, which loads each split of
HuggingFaceH4/ultrachat_200k, keeps the first ``int(rows * pc / 100)`` rows and writes
``<download_dir>/<split>.jsonl``. This module is that step (``python -m shared.cli prepare``),
made safe for large data and for machines without the Hub:

- Splits are read with ``datasets`` in streaming mode, never loaded whole: the first rows of a
  split are all that is downloaded or read, and output is written line by line. Row counts come
  from the Parquet footers (exact, a few KiB per file) or, for other formats, a counting pass.
- A hub id is probed once with a short timeout before ``datasets`` gets it, because
  ``datasets`` retries an unreachable Hub for about 25 s before failing.
- Every output line has exactly ``prompt``, ``messages``, ``prompt_id`` (ultrachat's columns,
  which intake validates). Missing ones are derived as ultrachat does: the prompt is the first
  user message's content, its id the SHA-256 hex digest of the prompt's UTF-8 bytes.

Errors a user can fix are :class:`PrepareError`, whose message is one line.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from shared.blobnames import Kind, classify, sidecar_name, unsafe_reason

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient
    from datasets import DatasetBuilder, IterableDataset

    from shared.config import Settings

MESSAGES = "messages"
DATA_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}
SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}.*$")  # the Hub's data/<split>-00000-of-00003-<hash>.parquet
HUB_PROBE_TIMEOUT_S = 10
PROGRESS_EVERY = 1000
READ_BATCH_ROWS = 1000
KEPT_MESSAGE_KEYS = ("role", "content")  # kept even when null, so validation reports them


class PrepareError(Exception):
    """A problem the user can fix (unknown split, unreachable Hub, ...); the message is one line."""


def one_line(error: BaseException | str) -> str:
    """Library messages can span lines; the CLI promises a single line on stderr."""
    return " ".join(str(error).split())


# Opening a dataset -----------------------------------------------------------------------


@dataclass
class Source:
    """A dataset's splits, readable as streams, plus what is needed to count and protect them."""

    label: str  # what the user passed, for messages
    builder: DatasetBuilder
    local_files: frozenset[Path] = field(default_factory=frozenset)

    @property
    def splits(self) -> list[str]:
        """Split names in the dataset's own order (README ``configs``, else the builder's info)."""
        data_files = getattr(self.builder.config, "data_files", None)
        if data_files:
            return [str(split) for split in data_files]
        return [str(split) for split in (self.builder.info.splits or {})]

    def stream(self, split: str) -> IterableDataset:
        return self.builder.as_streaming_dataset(split=split)

    def count(self, split: str) -> int:
        """Rows in ``split``: from the Parquet footers when possible, else by reading it once."""
        files = _split_files(self.builder, split)
        if self.builder.name == "parquet" and files and getattr(self.builder.config, "filters", None) is None:
            return sum(parquet_rows(path) for path in files)
        return sum(1 for _ in self.stream(split))


def _split_files(builder: DatasetBuilder, split: str) -> list[str]:
    data_files = getattr(builder.config, "data_files", None) or {}
    for name, files in data_files.items():
        if str(name) == split:
            return [str(f) for f in files]
    return []


def parquet_rows(path: str) -> int:
    """A Parquet file's row count from its footer, so counting never reads the data (local or ``hf://``)."""
    import pyarrow.parquet as pq
    from datasets.utils.file_utils import xopen

    with xopen(path, "rb") as file:
        return pq.ParquetFile(file).metadata.num_rows


def open_dataset(dataset: str, config: str | None = None) -> Source:
    """A hub id, a folder laid out like a hub repository, a folder of data files, or one data file."""
    path = Path(dataset).expanduser()
    if path.exists():
        source = Source(dataset, _builder(dataset, local_arguments(path), config, hub=False))
        files = (Path(f).resolve() for split in source.splits for f in _split_files(source.builder, split))
        source.local_files = frozenset(files)
        return source
    if looks_like_path(dataset):
        raise PrepareError(f"{dataset}: no such file or folder")
    if not hub_offline():
        probe_hub(dataset)
    return Source(dataset, _builder(dataset, {"path": dataset}, config, hub=True))


def looks_like_path(text: str) -> bool:
    """True when ``text`` cannot be a hub dataset id (so a missing file is reported as one)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(text).suffix.lower() in DATA_FORMATS or text.startswith(("~", ".")):
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return True
    return False


def local_arguments(path: Path) -> dict[str, Any]:
    """``load_dataset_builder`` arguments for a local file or folder.

    A folder with a README.md is a hub repository download: ``datasets`` reads its ``configs``
    (or infers splits the Hub's way). A folder of flat data files (this command's own output,
    for one) gets one split per file stem, shard suffix removed: ``datasets``' own inference
    would merge ``train_sft`` and ``train_gen`` into one ``train`` split.
    """
    if path.is_file():
        return {"path": data_format([path]), "data_files": {split_name(path): [str(path)]}}
    if (path / "README.md").is_file():
        return {"path": str(path)}
    flat = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_FORMATS and p.name[0] != ".")
    if not flat:
        return {"path": str(path)}  # nested layouts (data/train-*.parquet, train/...): datasets' inference
    data_files: dict[str, list[str]] = {}
    for file in flat:
        data_files.setdefault(split_name(file), []).append(str(file))
    return {"path": data_format(flat), "data_files": data_files}


def split_name(path: Path) -> str:
    """``train_sft-00000-of-00003-abc.parquet`` -> ``train_sft``; ``test.jsonl`` -> ``test``."""
    return SHARD_SUFFIX.sub("", path.stem) or path.stem


def data_format(files: Sequence[Path]) -> str:
    """The one ``datasets`` builder that reads all ``files`` (mixed formats cannot share one)."""
    formats = {DATA_FORMATS.get(f.suffix.lower()) for f in files}
    if None in formats:
        raise PrepareError(f"{files[0]}: not a Parquet, JSON or JSON Lines file (.parquet, .json, .jsonl)")
    if len(formats) > 1:
        raise PrepareError(f"{files[0].parent}: mixes Parquet and JSON files; put each format in its own folder")
    return formats.pop()  # type: ignore[return-value]


def hub_offline() -> bool:
    """The user asked for the local cache only (``HF_HUB_OFFLINE=1``): no probe, no network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable(dataset: str, cause: str = "") -> PrepareError:
    detail = f" ({cause})" if cause else ""
    return PrepareError(
        f"cannot reach the Hugging Face Hub for {dataset}{detail}; download it elsewhere "
        f"(`huggingface-cli download --repo-type dataset {dataset} --local-dir DIR`) and pass --dataset DIR"
    )


def probe_hub(dataset: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """One request, no retries: fail in seconds when the Hub cannot be reached or has no such dataset.

    Other HTTP errors (a 5xx) are left to ``datasets``, which retries them.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HTTPError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(dataset, timeout=timeout_s)
    except GatedRepoError as error:
        raise PrepareError(
            f"{dataset} is gated on the Hugging Face Hub: accept its terms there and log in (`huggingface-cli login`)"
        ) from error
    except RepositoryNotFoundError as error:
        raise PrepareError(
            f"{dataset}: no such local file or folder, and no dataset of that name on the Hugging Face Hub "
            "(if it is private, log in with `huggingface-cli login`)"
        ) from error
    except HfHubHTTPError:
        return
    except (HTTPError, OSError) as error:  # HTTPError without a response: connect/read errors, timeouts
        raise hub_unreachable(dataset, f"{type(error).__name__}: {one_line(error)}") from error


def _builder(label: str, arguments: dict[str, Any], config: str | None, *, hub: bool) -> DatasetBuilder:
    import datasets
    from datasets.exceptions import DatasetNotFoundError, DatasetsError

    try:
        builder = datasets.load_dataset_builder(**arguments, name=config)
    except (DatasetNotFoundError, ConnectionError) as error:
        if hub and hub_offline():
            raise PrepareError(
                f"{label} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; unset it, or download "
                f"it elsewhere (`huggingface-cli download --repo-type dataset {label} --local-dir DIR`) "
                "and pass --dataset DIR"
            ) from error
        if hub and isinstance(error, ConnectionError):
            raise hub_unreachable(label, one_line(error)) from error
        raise PrepareError(f"{label}: {one_line(error)}") from error
    except (DatasetsError, ValueError, OSError) as error:  # bad config name, patterns matching nothing, ...
        raise PrepareError(f"{label}: {one_line(error)}") from error
    if getattr(builder.config, "batch_size", 0) is None:
        # Parquet otherwise hands over (and turns into Python objects) a whole row group at a time:
        # hundreds of MB for a large one. The row group is still read whole, as Parquet stores it.
        builder.config.batch_size = READ_BATCH_ROWS
    return builder


# Choosing splits and rows ----------------------------------------------------------------


def check_percentage(pc: float) -> float:
    if not (math.isfinite(pc) and 0 < pc <= 100):
        raise PrepareError(f"the percentage must be more than 0 and at most 100, got {pc:g}")
    return pc


def rows_for(total: int, pc: float) -> int:
    """Rows kept of ``total``: ``floor(total * pc / 100)`` as the walkthrough's ``int()``, at least 1.

    Exact arithmetic (``Fraction`` of the decimal text), so 29% of 100 is 29, not 28.
    """
    if total <= 0:
        return 0
    return max(1, math.floor(Fraction(str(pc)) * total / 100))


def choose_splits(available: Sequence[str], wanted: Sequence[str] | None, label: str) -> list[str]:
    """The splits to write: all of them, or the ones asked for (in the order asked), all checked."""
    if not available:
        raise PrepareError(f"{label}: no splits found")
    if not wanted:
        return list(available)
    for name in wanted:
        if name not in available:
            raise PrepareError(f"unknown split {name!r}; {label} has: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def pick_split(splits: Sequence[str], role: str, given: str | None = None, train: str | None = None) -> str | None:
    """The ``train`` or ``test`` split to upload, when not given: the split whose name starts with ``role``.

    Several candidates are narrowed by: the exact name ``role``; for ``test``, the one named like
    the train split (``train_sft`` -> ``test_sft``); the one with ``sft`` in its name (ultrachat's
    supervised fine-tuning splits, which is what the pipeline does). Still several: ask.
    """
    if given is not None:
        if given not in splits:
            raise PrepareError(f"--{role}-split {given!r} is not among the prepared splits: {', '.join(splits)}")
        return given
    candidates = [s for s in splits if s.lower().startswith(role)]
    if len(candidates) > 1:
        narrowers: list[Callable[[str], bool]] = [lambda s: s.lower() == role]
        if train is not None and train.lower().startswith("train"):
            narrowers.append(lambda s: s[len(role) :] == train[len("train") :])
        narrowers.append(lambda s: "sft" in s.lower())
        for narrower in narrowers:
            narrowed = [s for s in candidates if narrower(s)]
            if len(narrowed) == 1:
                return narrowed[0]
        raise PrepareError(f"several {role} splits ({', '.join(candidates)}): choose one with --{role}-split")
    if candidates:
        return candidates[0]
    if role == "train":
        raise PrepareError(f"no split name starts with 'train' ({', '.join(splits)}): choose one with --train-split")
    return None


def sample_indices(total: int, count: int, seed: int) -> list[int]:
    """A seeded random choice of ``count`` row numbers, ascending (rows stay in dataset order).

    Python's ``random`` with a fixed seed is stable across versions and platforms.
    """
    return sorted(random.Random(seed).sample(range(total), count))


def pick_rows(rows: Iterable[dict[str, Any]], indices: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The rows at ascending ``indices``, in one pass that stops after the last one."""
    if not indices:
        return
    wanted = iter(indices)
    target = next(wanted)
    for index, row in enumerate(rows):
        if index == target:
            yield row
            target = next(wanted, -1)
            if target < 0:
                return


# Records ---------------------------------------------------------------------------------


def first_user_content(messages: Any) -> str:
    """ultrachat's ``prompt``: the content of the first user message ('' when there is none)."""
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
                return message["content"]
    return ""


def prompt_id_for(prompt: str) -> str:
    """ultrachat's ``prompt_id``: the SHA-256 hex digest of the prompt's UTF-8 bytes."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def clean_messages(messages: Any) -> Any:
    """Messages as given, minus keys that are null only because Arrow gives every struct all keys.

    A JSON source with ``name`` in one message has ``name: null`` in every other one once read
    through Arrow. ``role`` and ``content`` stay even when null, so validation reports them.
    """
    if not isinstance(messages, list):
        return messages
    return [
        {k: v for k, v in message.items() if v is not None or k in KEPT_MESSAGE_KEYS}
        if isinstance(message, dict)
        else message
        for message in messages
    ]


def to_record(row: dict[str, Any], messages_column: str = MESSAGES) -> dict[str, Any]:
    """One output line: ``prompt``, ``messages``, ``prompt_id``; missing or null ones derived."""
    messages = clean_messages(row.get(messages_column))
    prompt = row.get("prompt")
    if prompt is None:
        prompt = first_user_content(messages)
    prompt_id = row.get("prompt_id")
    if prompt_id is None:
        prompt_id = prompt_id_for(prompt) if isinstance(prompt, str) else ""
    return {"prompt": prompt, "messages": messages, "prompt_id": prompt_id}


def check_columns(columns: Sequence[str], messages_column: str, split: str, label: str) -> None:
    if messages_column in columns:
        return
    hint = (
        "; name the conversation column with --messages-column"
        if messages_column == MESSAGES
        else f"; --messages-column {messages_column} is not one of them"
    )
    raise PrepareError(
        f"{label}: split {split!r} has no {messages_column!r} column (columns: {', '.join(columns) or 'none'}){hint}"
    )


def columns_of(stream: IterableDataset) -> list[str]:
    """Column names from the features, or from the first row when a format does not declare them."""
    if stream.column_names is not None:
        return list(stream.column_names)
    first = next(iter(stream.take(1)), None)
    return list(first) if first is not None else []


# Writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitResult:
    split: str
    rows_in: int
    rows_written: int
    path: Path
    bytes: int


def check_targets(source: Source, splits: Sequence[str], out_dir: Path) -> None:
    """Refuse to write over the dataset's own files (a folder of .jsonl files prepared into itself)."""
    for split in splits:
        target = out_dir / f"{split}.jsonl"
        if target.resolve() in source.local_files:
            raise PrepareError(f"{target} is one of the dataset's own files; choose another --download-dir")


def write_jsonl(records: Iterable[dict[str, Any]], target: Path, progress: Callable[[int], None] | None = None) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped), via a ``.partial`` file renamed at the end.

    A failure never leaves a half-written ``<split>.jsonl`` that looks finished. Returns the row count.
    """
    partial = target.with_name(target.name + ".partial")
    written = 0
    try:
        with partial.open("wb") as out:
            for record in records:
                out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                written += 1
                if progress is not None and written % PROGRESS_EVERY == 0:
                    progress(written)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(written)
    return written


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a split can raise for reasons outside this program (network, corrupt files)."""
    import pyarrow as pa
    from datasets.exceptions import DatasetsError
    from huggingface_hub.errors import HTTPError

    return (OSError, DatasetsError, HTTPError, pa.ArrowException, orjson.JSONEncodeError)


def prepare_split(
    source: Source,
    split: str,
    out_dir: Path,
    pc: float,
    *,
    seed: int | None = None,
    messages_column: str = MESSAGES,
    progress: Callable[[int, int], Callable[[int], None] | None] | None = None,
) -> SplitResult:
    """Write ``pc`` percent of ``split`` to ``out_dir/<split>.jsonl``: its first rows, or a seeded sample.

    ``progress(total_rows, rows_to_write)`` may return a callback that gets the rows written so far.
    """
    check_targets(source, [split], out_dir)
    target = out_dir / f"{split}.jsonl"
    try:
        stream = source.stream(split)
        columns = columns_of(stream)
        if columns:  # an empty split has no columns to check and nothing to write
            check_columns(columns, messages_column, split, source.label)
            kept = [c for c in (messages_column, "prompt", "prompt_id") if c in columns]
            stream = stream.select_columns(kept)
        total = source.count(split)
        count = rows_for(total, pc)
        rows: Iterable[dict[str, Any]] = (
            stream.take(count) if seed is None else pick_rows(stream, sample_indices(total, count, seed))
        )
        callback = progress(total, count) if progress is not None else None
        out_dir.mkdir(parents=True, exist_ok=True)
        written = write_jsonl((to_record(row, messages_column) for row in rows), target, callback)
    except PrepareError:
        raise
    except _read_errors() as error:
        raise PrepareError(f"{source.label}, split {split!r}: {type(error).__name__}: {one_line(error)}") from error
    return SplitResult(split, total, written, target, target.stat().st_size)


def quiet_libraries(progress_bars: bool) -> None:
    """Keep ``datasets``/``huggingface_hub`` warnings (and, off a terminal, their bars) off stderr.

    Errors are reported by the CLI in one line; their retry chatter would bury it.
    """
    import datasets
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    datasets.logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    if not progress_bars:
        datasets.disable_progress_bars()
        disable_progress_bars()


# Uploading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    path: Path
    blob: str
    role: str  # "test" (the sidecar) or "train"


def default_name(dataset: str) -> str:
    """The upload's name from the dataset: ``HuggingFaceH4/ultrachat_200k`` -> ``ultrachat_200k``."""
    path = Path(dataset.rstrip("/\\"))
    return (path.stem if path.suffix.lower() in DATA_FORMATS else path.name) or "dataset"


def blob_names(settings: Settings, name: str) -> tuple[str, str]:
    """The dataset and sidecar blob names for ``name``, checked the way intake will read them."""
    main = f"{settings.intake_prefix}{name}.jsonl"
    reason = unsafe_reason(main)
    if reason:
        raise PrepareError(f"cannot upload as {main!r}: {reason}; choose another --name")
    if classify(main, settings).kind is not Kind.DATASET:
        raise PrepareError(f"{main!r} would not be read as a dataset by intake; choose another --name")
    return main, sidecar_name(main)


def upload_plan(settings: Settings, name: str, train: Path, test: Path | None) -> list[Upload]:
    """What goes where, sidecar FIRST: intake reads ``<name>.test.jsonl`` when ``<name>.jsonl``
    arrives, so the test split must already be there.
    """
    main, sidecar = blob_names(settings, name)
    plan = [Upload(test, sidecar, "test")] if test is not None else []
    return [*plan, Upload(train, main, "train")]


def upload_file(
    blob: BlobClient, path: Path, *, max_concurrency: int = 4, progress: Callable[[int], None] | None = None
) -> None:
    """Stream ``path`` to ``blob`` (replacing it) in parallel blocks, never reading it whole."""
    from azure.storage.blob import ContentSettings

    hook = (lambda current, _total: progress(current)) if progress is not None else None
    with path.open("rb") as data:
        blob.upload_blob(
            data,
            length=os.fstat(data.fileno()).st_size,
            overwrite=True,
            max_concurrency=max_concurrency,
            content_settings=ContentSettings(content_type="application/jsonl"),
            progress_hook=hook,
        )
