"""ftpilot's command line: ``python -m shared.cli COMMAND ...``.

Exit codes are part of the interface (scripts and CI use them): 0 success, 1 the command
ran and the answer is "no" (an invalid dataset), 2 it could not run (bad arguments,
missing file, bad settings), with a one-line message on stderr and never a traceback.

Adding a command: write ``_add_<name>(commands)`` that declares its arguments and sets
``handler`` (a function taking the parsed arguments and returning the exit code), then
call it from :func:`build_parser`. Import heavy modules inside the handler, so that every
command (and ``--help``) starts fast.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.validation import Report

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2
SHOWN_CHARS = 400

Commands = Any  # argparse's private _SubParsersAction


class UsageError(Exception):
    """The command could not run; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ftpilot", description="Hands-off fine-tuning of chat models on Azure Machine Learning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_up(commands)
    _add_prepare(commands)
    _add_validate(commands)
    _add_status(commands)
    _add_cleanup(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from shared.logs import install

    install()
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as error:
        print(f"ftpilot: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ftpilot: interrupted", file=sys.stderr)
        return 130


def load_settings() -> Settings:
    """Settings as the Functions host would see them (local.settings.json, then the environment)."""
    from pydantic import ValidationError

    from shared.config import get_settings, load_local_settings

    try:
        load_local_settings()
        return get_settings()
    except (ValidationError, ValueError) as error:  # ValueError: local.settings.json is not JSON
        if isinstance(error, ValidationError):
            detail = "; ".join(f"FTPILOT_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        else:
            detail = str(error)
        raise UsageError(f"bad settings: {detail}") from error


# validate --------------------------------------------------------------------------------


def _add_validate(commands: Commands) -> None:
    command = commands.add_parser(
        "validate",
        help="check a JSON Lines dataset before uploading it",
        description="Check a chat fine-tuning dataset (JSON Lines, one conversation per line) the way intake "
        "will. Exit code 0: valid, 1: invalid, 2: could not run.",
    )
    command.add_argument("path", type=Path, help="the .jsonl file")
    command.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    command.add_argument("--show", type=_count, default=0, metavar="N", help="also print the first N valid examples")
    command.add_argument("--max-seq-length", type=_positive, help="override FTPILOT_MAX_SEQ_LENGTH")
    command.add_argument("--tokenizer", help="tokenizer.json or a folder holding one, for exact token counts")
    command.add_argument("--min-examples-warning", type=_count, help="override FTPILOT_MIN_EXAMPLES_WARNING")
    command.add_argument("--epochs", type=_positive, help="epochs for the billed-token estimate")
    command.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    import orjson

    from shared.validation import ValidationOptions, validate_path

    path: Path = args.path
    if not path.is_file():
        raise UsageError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    overrides = {
        name: value
        for name in ("max_seq_length", "tokenizer", "min_examples_warning", "epochs")
        if (value := getattr(args, name)) is not None
    }

    def options() -> ValidationOptions:  # called once a big file's workers are forked and its hashing runs
        return ValidationOptions.from_settings(load_settings(), keep_examples=args.show, **overrides)

    try:
        with _progress_bar(path) as progress:
            report = validate_path(path, options, progress=progress)
    except ValueError as error:  # unusable options, e.g. a tokenizer that cannot be loaded
        raise UsageError(str(error)) from error
    except OSError as error:
        raise UsageError(f"{path}: {error.strerror or error}") from error

    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(report.to_markdown())
        if args.show:
            sys.stdout.write(format_samples(report))
    return EXIT_OK if report.valid else EXIT_NO


def format_samples(report: Report) -> str:
    """The kept example conversations, one block per example, long contents shortened."""
    if not report.samples:
        return "\nNo valid examples to show.\n"
    out = ["", f"### First {len(report.samples)} valid examples"]
    for sample in report.samples:
        out += ["", f"--- line {sample.line:,} ---"]
        for message in sample.messages:
            content: str = message["content"]
            if len(content) > SHOWN_CHARS:
                content = f"{content[:SHOWN_CHARS]}… (+{len(content) - SHOWN_CHARS:,} chars)"
            out.append(f"[{message['role']}]")
            out += [f"    {line}" for line in content.splitlines() or [""]]
    return "\n".join(out) + "\n"


@contextmanager
def _progress_bar(path: Path, desc: str = "validating") -> Iterator[Callable[[int], None] | None]:
    """A tqdm bar on stderr when it is a terminal (never in pipes, logs or CI); else no callback."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc, delay=0.5) as bar:
        yield lambda done: bar.update(done - bar.n)


# prepare ---------------------------------------------------------------------------------


def _add_prepare(commands: Commands) -> None:
    command = commands.add_parser(
        "prepare",
        help="write a slice of every split of a Hugging Face dataset as .jsonl files (and upload it)",
        description="The walkthrough's download-dataset.py: take PC percent of each split of a dataset (a Hub id, a "
        "folder laid out like a Hub repository, or Parquet/JSON/JSON Lines files) and write "
        "<download_dir>/<split>.jsonl with prompt, messages and prompt_id per line. The first rows by default "
        "(floor of PC percent, at least 1 row), or a seeded random sample with --sample. --upload then puts the "
        "test split and the train split in the intake container, test first, which starts a fine-tuning run.",
    )
    command.add_argument(
        "--dataset", default="HuggingFaceH4/ultrachat_200k", help="Hub id, folder or file (default %(default)s)"
    )
    command.add_argument(
        "--dataset_subset", "--dataset-subset", dest="config", metavar="NAME", help="dataset configuration (subset)"
    )
    command.add_argument(
        "--download_dir",
        "--download-dir",
        dest="download_dir",
        type=Path,
        default=Path("data"),
        metavar="DIR",
        help="where <split>.jsonl files are written (default %(default)s)",
    )
    command.add_argument(
        "--dataset_split_pc",
        "--dataset-split-pc",
        dest="pc",
        type=_percentage,
        default=5.0,
        metavar="PC",
        help="percent of each split to keep, more than 0 and at most 100 (default 5)",
    )
    command.add_argument("--splits", type=_names, metavar="A,B", help="only these splits (default: all)")
    command.add_argument(
        "--sample", action="store_true", help="a seeded random sample instead of the first rows (reads every row)"
    )
    command.add_argument("--seed", type=int, metavar="S", help="seed of --sample (default 0)")
    command.add_argument(
        "--messages-column", default="messages", metavar="NAME", help="the conversation column (default messages)"
    )
    upload = command.add_argument_group("upload")
    upload.add_argument("--upload", action="store_true", help="upload the train and test splits to intake")
    upload.add_argument("--train-split", metavar="SPLIT", help="split to train on (default: the one named train*)")
    upload.add_argument("--test-split", metavar="SPLIT", help="split to test on (default: the one named test*)")
    upload.add_argument("--name", help="upload as <intake prefix>NAME.jsonl (default: the dataset's name)")
    upload.add_argument(
        "--max-concurrency", type=_positive, metavar="N", help="parallel block uploads per file (default 4)"
    )
    command.set_defaults(handler=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from shared import prepare

    if args.seed is not None and not args.sample:
        raise UsageError("--seed needs --sample")
    upload_only = ("train_split", "test_split", "name", "max_concurrency")
    if not args.upload and (given := [n for n in upload_only if getattr(args, n) is not None]):
        raise UsageError(f"--{given[0].replace('_', '-')} needs --upload")
    settings = load_settings() if args.upload else None  # bad settings fail before any download
    try:
        prepare.quiet_libraries(progress_bars=sys.stderr.isatty())
        source = prepare.open_dataset(args.dataset, args.config)
        splits = prepare.choose_splits(source.splits, args.splits, args.dataset)
        if settings is not None:
            train = prepare.pick_split(splits, "train", args.train_split)
            test = prepare.pick_split(splits, "test", args.test_split, train=train)
            plan_name = args.name or prepare.default_name(args.dataset)
            prepare.blob_names(settings, plan_name)  # a bad --name fails before any download
        prepare.check_targets(source, splits, args.download_dir)
        seed = (args.seed or 0) if args.sample else None
        results = [
            prepare.prepare_split(
                source,
                split,
                args.download_dir,
                args.pc,
                seed=seed,
                messages_column=args.messages_column,
                progress=_rows_bar(split),
            )
            for split in splits
        ]
    except prepare.PrepareError as error:
        raise UsageError(str(error)) from error
    how = f"a random {args.pc:g}% (seed {seed})" if seed is not None else f"the first {args.pc:g}%"
    print(f"{args.dataset}: {how} of each split (rounded down, at least 1 row)")
    rows = [(r.split, f"{r.rows_in:,}", f"{r.rows_written:,}", f"{r.bytes:,}", str(r.path)) for r in results]
    print(_table(("split", "rows in", "written", "bytes", "file"), rows, right=(1, 2, 3)))
    if settings is not None:
        files = {r.split: r.path for r in results}
        _upload_splits(prepare.upload_plan(settings, plan_name, files[train], files[test] if test else None), args)
    return EXIT_OK


def _upload_splits(plan: list[Any], args: argparse.Namespace) -> None:
    """Upload in plan order (the sidecar test split first), each file streamed with a progress bar."""
    from shared.blobnames import sidecar_name
    from shared.prepare import upload_file

    with _run_records("intake container") as services:
        container = services.settings.intake_container
        if len(plan) == 1 and services.storage.blob(sidecar := sidecar_name(plan[0].blob)).exists():
            raise UsageError(
                f"{container}/{sidecar} exists from an earlier upload and intake would test on it; "
                "delete it, pass --test-split, or choose another --name"
            )
        for item in plan:
            blob = services.storage.blob(item.blob)
            with _progress_bar(item.path, desc=f"uploading {item.path.name}") as progress:
                upload_file(blob, item.path, max_concurrency=args.max_concurrency or 4, progress=progress)
            role = "test split (sidecar, uploaded first)" if item.role == "test" else "train split"
            print(f"uploaded {item.path} ({item.path.stat().st_size:,} bytes) to {container}/{item.blob}: {role}")
    if len(plan) == 1:
        print("No test split: intake holds out a deterministic share of the train split for testing.")
    print("Intake validates the upload and starts fine-tuning; follow it with `ftpilot status`.")


def _rows_bar(split: str) -> Callable[[int, int], Callable[[int], None] | None]:
    """A factory of tqdm bars counting rows written (a terminal only; the bars close when done)."""

    def start(_total: int, count: int) -> Callable[[int], None] | None:
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        bar = tqdm(total=count, unit=" rows", desc=split, delay=0.5, leave=False)

        def update(done: int) -> None:
            bar.update(done - bar.n)
            if done >= count:
                bar.close()

        return update

    return start


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain aligned table (columns in ``right`` right-aligned), readable in logs and pipes."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


# status ----------------------------------------------------------------------------------


def _add_status(commands: Commands) -> None:
    command = commands.add_parser(
        "status",
        help="where every dataset's run stands",
        description="Every run: dataset, state, job, model, endpoint, last activity and the reason for a failure.",
    )
    command.add_argument("--json", action="store_true", help="print the runs as JSON on stdout")
    command.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    import dataclasses

    import orjson

    from shared.status import render, rows

    with _run_records() as services:
        table_rows = rows(services.runs.all())
    if args.json:
        payload = [dataclasses.asdict(row) for row in table_rows]
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not table_rows:
        print("No runs yet: upload a .jsonl file to the intake container (or run `ftpilot demo`).")
    else:
        _console().print(render(table_rows))
    return EXIT_OK


# cleanup ---------------------------------------------------------------------------------


def _add_cleanup(commands: Commands) -> None:
    command = commands.add_parser(
        "cleanup",
        help="run the idle-endpoint sweep once (--dry-run: only say what it would delete)",
        description="One tick of the timer function: delete the endpoints ftpilot manages that served no request "
        "in the idle window. With --dry-run nothing is deleted or recorded.",
    )
    command.add_argument("--dry-run", action="store_true", help="report what the next tick would delete, and why")
    command.add_argument("--json", action="store_true", help="print the decisions as JSON on stdout")
    command.set_defaults(handler=_cleanup)


def _cleanup(args: argparse.Namespace) -> int:
    import dataclasses

    import orjson

    from shared.cleanup import sweep

    with _run_records() as services:
        decisions = sorted(sweep(services, dry_run=True if args.dry_run else None), key=lambda d: d.endpoint)
    if args.json:
        payload = [dataclasses.asdict(decision) for decision in decisions]
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not decisions:
        print("No endpoints managed by ftpilot.")
    else:
        from rich.table import Table

        table = Table(title="idle sweep (dry run: nothing deleted)" if args.dry_run else "idle sweep")
        for column in ("endpoint", "action", "reason", "run"):
            table.add_column(column, overflow="fold")
        for decision in decisions:
            table.add_row(decision.endpoint, decision.action, decision.reason, decision.run_id[:8])
        _console().print(table)
    return EXIT_NO if any(d.action == "failed" for d in decisions) else EXIT_OK


@contextmanager
def _run_records(what: str = "run records") -> Iterator[Any]:
    """Services over the configured storage, starting Azurite for the call when local storage is down.

    ``what`` names what the caller needs from storage, in the error messages.
    """
    from shared.host.runner import ensure_azurite
    from shared.services import Services

    settings = load_settings()
    try:
        emulator = ensure_azurite(settings)
    except (OSError, RuntimeError) as error:
        raise UsageError(f"cannot start Azurite for the local {what}: {error}") from error
    try:
        services = Services.create(settings)
        services.storage.ensure()
        yield services
    except _storage_errors() as error:
        from shared.storage import error_message

        raise UsageError(f"cannot reach the {what} in storage: {error_message(error)}") from error
    finally:
        if emulator is not None:
            emulator.stop()


def _storage_errors() -> tuple[type[Exception], ...]:
    from azure.core.exceptions import AzureError

    return (AzureError,)


# up and demo -----------------------------------------------------------------------------


def _add_up(commands: Commands) -> None:
    command = commands.add_parser(
        "up",
        help="run the local host: Azurite, the local workspace and every trigger, until Ctrl-C",
        description="Start Azurite if none is running, create the container, queues and table, and deliver blobs, "
        "run events, queue messages and the timer to the same functions Azure would. Ctrl-C stops everything.",
    )
    command.add_argument("--interval", type=float, default=1.0, help="seconds between delivery passes (default 1)")
    command.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    from shared.host.runner import LocalHost

    settings = load_settings()
    _quiet_logs()
    host = LocalHost(settings)

    def stop(signum: int, frame: object) -> None:
        """Ctrl-C, or SIGTERM from a service manager, `docker stop` or `kill`: finish the pass, then stop.

        A flag, not an exception: a KeyboardInterrupt raised inside an import or a finaliser can be
        swallowed there, and the host would never hear it. A second signal stops at once.
        """
        if host.stopping.is_set():
            raise KeyboardInterrupt
        host.stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host.start()
        if not host.stopping.is_set():
            print("Press Ctrl-C to stop.", flush=True)
            host.run(interval_s=args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _add_demo(commands: Commands) -> None:
    command = commands.add_parser(
        "demo",
        help="the whole flow once, on this machine: upload, validate, train, deploy, chat, idle sweep",
        description="Start the local host, upload a dataset (a generated ultrachat-shaped sample unless --file is "
        "given) and follow it until the idle sweep deletes its endpoint.",
    )
    command.add_argument("--file", type=Path, help="a .jsonl dataset to use instead of the generated sample")
    command.add_argument("--timeout", type=float, default=900, help="seconds to wait for the endpoint to go live")
    command.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from shared.host.demo import DemoFailed, demo_settings, next_steps, run_demo

    if args.file is not None and not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    load_settings()  # local.settings.json into the environment, checked
    settings = demo_settings()
    _quiet_logs()
    try:
        final = run_demo(args.file, timeout_s=args.timeout)
    except DemoFailed as error:
        print(f"\nThe demo stopped: {error}", file=sys.stderr)
        print(next_steps(settings))
        return EXIT_NO
    print(f"\nDone: run {final.run_id[:8]} went live, answered, and was {final.state} by the idle sweep.")
    print(next_steps(settings))
    return EXIT_OK


def _console() -> Any:
    """A rich console; piped into a file or a log, tables keep whole lines instead of 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)


def _quiet_logs() -> None:
    """Warnings and errors only: the host prints what happens from the run records itself."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "httpx", "mlflow", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# argument types --------------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _percentage(text: str) -> float:
    from shared.prepare import PrepareError, check_percentage

    try:
        return check_percentage(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    except PrepareError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no names in {text!r}")
    return names


def run() -> NoReturn:
    """The ``ftpilot`` process: :func:`main`, then an exit without the interpreter's last cycle collection.

    By then every object the command made is either still in use or garbage that the OS takes
    back with the process, but Python's shutdown still traverses them all looking for cycles:
    ~50 ms after a big file's validation (pydantic, numpy and the report loaded), more than the
    report itself takes, with both CPUs idle. Frozen, they are skipped. atexit handlers still
    run, and objects are still released by reference counting.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
