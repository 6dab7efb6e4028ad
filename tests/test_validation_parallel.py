"""The many-core pass gives exactly the one-core report, whatever falls on a block boundary."""

from __future__ import annotations

import hashlib
import itertools
import mmap
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.validation import ValidationOptions, parallel, validate_path, validator
from shared.validation.records import ExampleRecords
from tests.cli_process import cli_environment
from tests.test_validation import POSITIVE, encode, row, write


def everything_wrong() -> list[bytes]:
    """Every per-line finding, duplicates across the file, blank lines and a too-long line."""
    lines = [encode(row(i)) for i in range(1, 41)]
    for offset, (_, line) in enumerate(POSITIVE):
        lines.insert(3 + offset * 2, encode(line))
    lines += [b"", b"   ", encode(row(7)), encode(row(8, prompt_id="id-000002")), b"x" * 5000, encode(row(99))]
    return lines


@pytest.mark.parametrize("block_bytes", [1, 200, 5_000, 10**9])
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_report_equals_the_serial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int, workers: int
) -> None:
    path = write(tmp_path, everything_wrong(), newline=b"\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a BOM, so line 1 needs its special case
    options = ValidationOptions(max_line_bytes=2000, samples_per_code=3, keep_examples=5)
    serial = validate_path(path, options, workers=1).to_dict()
    monkeypatch.setattr(parallel, "BLOCK_BYTES", block_bytes)
    assert validate_path(path, options, workers=workers).to_dict() == serial
    assert serial["counts"]["line.too_long"] == 1
    assert serial["counts"]["example.duplicate"] >= 1


@pytest.mark.parametrize("block_bytes", [1, 1_000, 3_000, 10**9])
def test_lines_longer_than_a_range_give_the_serial_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    """Too-long lines spanning many ranges, a blank first line, one too long at the very end, no final newline."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join([b"", *everything_wrong(), b"y" * 4000, encode(row(5)), b"z" * 2500]))
    options = ValidationOptions(max_line_bytes=2000, samples_per_code=4)
    serial = validate_path(path, options, workers=1).to_dict()
    monkeypatch.setattr(parallel, "BLOCK_BYTES", block_bytes)
    assert validate_path(path, options, workers=2).to_dict() == serial
    assert serial["counts"]["line.too_long"] == 3


@pytest.mark.parametrize("seed", range(20))
def test_ranges_cut_only_at_line_starts_and_cover_the_file(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data = bytes(rng.choice(b"ab\n" if seed % 2 else b"abcdefgh\n") for _ in range(rng.randrange(0, 3000)))
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    block = rng.randrange(1, 200)
    first = rng.choice([None, rng.randrange(1, 200)])  # the short head range the calling process checks
    with path.open("rb") as file:
        cuts = parallel._cuts(file.fileno(), len(data), block, first=first)
    assert cuts[0] == 0
    assert cuts[-1] == len(data)
    assert cuts == sorted(set(cuts))
    assert all(data[cut - 1] == ord("\n") for cut in cuts[1:-1])
    for index, (start, end) in enumerate(itertools.pairwise(cuts[:-1])):  # each ends at the first line start a block on
        step = first if index == 0 and first is not None else block
        assert end - start >= step
        assert b"\n" not in data[start + step - 1 : end - 1]


def test_a_file_without_newlines_is_one_range(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 300_000)
    with path.open("rb") as file:
        assert parallel._cuts(file.fileno(), 300_000, 1_000) == [0, 300_000]


def test_progress_counts_the_checked_bytes_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, [row(i) for i in range(200)])
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 1_000)
    seen: list[int] = []
    report = validate_path(path, ValidationOptions(), workers=2, progress=seen.append)
    assert report.valid
    assert len(seen) > 10
    assert seen == sorted(seen)
    assert seen[-1] == path.stat().st_size


@pytest.mark.parametrize(
    "lines",
    [
        [b"[", encode(row(1)) + b",", encode(row(2)), b"]"],  # a JSON array
        [b"", b"x" * 5000, b"", b"{", b'  "messages": []', b"}"],  # pretty-printed, after a too-long line
    ],
)
def test_a_file_that_is_not_json_lines_stops_at_its_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[bytes]
) -> None:
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 1)
    path = write(tmp_path, lines)
    options = ValidationOptions(max_line_bytes=2000)
    serial = validate_path(path, options, workers=1).to_dict()
    assert validate_path(path, options, workers=2).to_dict() == serial
    assert serial["valid"] is False


def test_big_files_use_the_cores_and_small_ones_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[int] = []
    real = parallel.start_workers
    monkeypatch.setattr(parallel, "start_workers", lambda *a: used.append(a[-1]) or real(*a))
    monkeypatch.setattr(validator.os, "cpu_count", lambda: 2)
    path = write(tmp_path, [row(i) for i in range(20)])
    validate_path(path, ValidationOptions())
    assert used == []
    monkeypatch.setattr(validator, "PARALLEL_FROM_BYTES", 1)
    validate_path(path, ValidationOptions())
    assert used == [2]


_real_hash_range = parallel._hash_range


def _hash_range_that_tells(path: str, size: int) -> str:
    """The hash task, touching a file first (pickled by name, run in a forked worker)."""
    Path(os.environ["HASHING_STARTED"]).touch()
    return _real_hash_range(path, size)


def test_options_are_read_while_a_worker_hashes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the options cost to find (the CLI reads the settings) overlaps the hashing on a big file."""
    path = write(tmp_path, [row(i) for i in range(30)])
    started = tmp_path / "hashing"
    monkeypatch.setattr(parallel, "_hash_range", _hash_range_that_tells)
    monkeypatch.setenv("HASHING_STARTED", str(started))
    calls: list[int] = []

    def options() -> ValidationOptions:
        for _ in range(500):  # the hashing has begun before the options are asked for
            if started.exists():
                break
            time.sleep(0.01)
        calls.append(len(multiprocessing.active_children()))
        return ValidationOptions(max_seq_length=30)

    report = validate_path(path, options, workers=2)
    assert started.exists()
    assert calls == [2]
    serial = validate_path(path, ValidationOptions(max_seq_length=30), workers=1)
    assert report.to_dict() == serial.to_dict()  # the identity included: the whole file, hashed
    assert report.counts["tokens.too_long"] == 30  # the options that were read are the ones checked against


def test_a_file_that_is_not_text_at_all_forks_no_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "start_workers", lambda workers: pytest.fail("forked for a gzip file"))
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 100)
    report = validate_path(path, ValidationOptions(), workers=2)
    assert report.counts == {"file.binary": 1}
    assert not report.complete


def test_merged_line_numbers_are_shifted_and_clamped() -> None:
    part = ExampleRecords()
    for line in (1, 2, 5):
        part.add(line, 10, 2, 1, conversation=line, prompt_id=line)
    merged = ExampleRecords()
    merged.extend(part, line_offset=100)
    assert list(merged.lines) == [101, 102, 105]
    merged.extend(part, line_offset=2**32 - 3)  # past four billion lines: clamped, not an OverflowError
    assert list(merged.lines)[3:] == [2**32 - 2, 2**32 - 1, 2**32 - 1]
    assert list(merged.conversations) == [1, 2, 5, 1, 2, 5]


def _hash_range_cut_short(path: str, size: int) -> str:
    """The hash task when the file is cut short under its mapping: SIGBUS, as a real truncation gives."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as mapped:  # noqa: PTH123
        os.truncate(path, 0)
        return str(mapped[size - 1])  # a page the file no longer has


def _hash_range_after_a_cut(path: str, size: int) -> str:
    os.truncate(path, size // 2)
    return _real_hash_range(path, size)


def _scan_range_killed(task: parallel.Task) -> object:
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return None


@pytest.mark.parametrize("hash_range", [_hash_range_cut_short, _hash_range_after_a_cut])
def test_a_file_cut_short_while_it_is_validated_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hash_range: object
) -> None:
    path = write(tmp_path, [row(i) for i in range(30)])
    monkeypatch.setattr(parallel, "_hash_range", hash_range)
    monkeypatch.setattr(parallel, "WATCH_S", 0.05)
    with pytest.raises(parallel.FileShrankError, match="shrank to "):
        validate_path(path, ValidationOptions(), workers=2)
    assert multiprocessing.active_children() == []


# A process of its own, with faulthandler on as PYTHONFAULTHANDLER=1 would set it: the hashing
# worker dies of SIGBUS, and only the calling process may say so.
_CUT_SHORT_UNDER_THE_HASH = """
import mmap, os, sys
from shared.validation import ValidationOptions, parallel, validate_path

def cut_short(path, size):
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as mapped:
        os.truncate(path, 0)
        return str(mapped[size - 1])

parallel._hash_range = cut_short
parallel.WATCH_S = 0.05
try:
    validate_path(sys.argv[1], ValidationOptions(), workers=2)
except parallel.FileShrankError as error:
    print(error)
"""


def test_a_file_cut_short_under_the_hash_is_one_line_even_with_faulthandler_on(tmp_path: Path) -> None:
    path = write(tmp_path, [row(i) for i in range(30)])
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _CUT_SHORT_UNDER_THE_HASH, str(path)],
        capture_output=True,
        text=True,
        env=cli_environment(),
        timeout=60,
        check=False,
    )
    assert "shrank to 0 bytes" in result.stdout, result.stderr
    assert result.stderr == ""  # no "Fatal Python error: Bus error" dump from the worker


def test_a_range_the_file_no_longer_has_is_an_error(tmp_path: Path) -> None:
    """Read after the hash was done: the checks would cover less than the identity names."""
    path = write(tmp_path, [row(i) for i in range(30)])
    size = path.stat().st_size
    with pytest.raises(parallel.FileShrankError, match=f"shrank to {size:,} bytes"):
        parallel._scan_range((str(path), 0, size + 100, ValidationOptions()))


def test_a_worker_killed_mid_range_is_an_error_not_a_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, [row(i) for i in range(30)])
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 1_000)
    monkeypatch.setattr(parallel, "_scan_range", _scan_range_killed)
    monkeypatch.setattr(parallel, "WATCH_S", 0.05)
    with pytest.raises(parallel.WorkerLostError, match="signal SIGKILL"):
        validate_path(path, ValidationOptions(), workers=2)
    assert multiprocessing.active_children() == []


def _hashing_growth(path: str, size: int) -> int:
    """How much the peak resident set of a fresh process grows while it hashes ``path`` (KiB)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    parallel._hash_range(path, size)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


def test_hashing_a_big_file_maps_a_window_at_a_time(tmp_path: Path) -> None:
    """Mapped pages count in the resident set: the whole file mapped at once read as 971 MiB at 1 GB."""
    path = tmp_path / "big.jsonl"
    size = 4 * parallel.HASH_WINDOW_BYTES
    with path.open("wb") as file:
        file.truncate(size)  # sparse, but every page is read, and resident while mapped
    with multiprocessing.get_context("fork").Pool(1) as pool:
        grown_kib = pool.apply(_hashing_growth, (str(path), size))
    assert grown_kib * 1024 < 2 * parallel.HASH_WINDOW_BYTES
    assert parallel._hash_range(str(path), size) == hashlib.sha256(bytes(size)).hexdigest()
