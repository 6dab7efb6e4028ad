"""The run identity of a big local file, its SHA-256, computed in a process of its own.

The hashing process is the first thing a parallel validation starts, before anything heavy is
imported: everything the calling process does next (the checks' modules, the settings, numpy, the
scanning workers' fork) then runs beside it on the other core instead of before it. So this module
imports nothing beyond the standard library's process and hashing machinery.

The file is hashed through a read-only mapping, a window at a time (reading into a buffer cost
~0.2 s of system time per GB; the pages of a mapping count in the resident set while it lasts). A
page the file no longer has kills the hashing process with SIGBUS, so the caller watches it: a
process that dies is an error in one line, never a wait forever.
"""

from __future__ import annotations

import faulthandler
import hashlib
import mmap
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

# The hashing process maps this much of the file at a time (a multiple of mmap.ALLOCATIONGRANULARITY).
HASH_WINDOW_BYTES = 16 * 1024 * 1024
_UPDATE_BYTES = 1024 * 1024  # hashlib releases the GIL for each update; the size hardly matters here


class FileShrankError(OSError):
    """The file was cut short while it was being validated: its report would describe no file."""


class WorkerLostError(OSError):
    """A worker process ended without answering (killed for memory, say)."""


def shrank(now: int) -> str:
    """The message of a :class:`FileShrankError`, ``now`` being the file's size when it was noticed."""
    return f"the file shrank to {now:,} bytes while it was validated; validate it again once it is written"


def lost(process: BaseProcess, path: Path, size: int) -> OSError:
    """Why ``process`` ended without answering: the file shrank under it, or it was killed."""
    if (now := path.stat().st_size) < size:
        return FileShrankError(shrank(now))
    code = process.exitcode or 0
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return WorkerLostError(f"a validation worker process ended ({how}) before it had answered")


def sha256_of(path: str, size: int) -> str:
    """The SHA-256 of the first ``size`` bytes of ``path``, read through a mapping a window at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:  # noqa: PTH123 - a plain fd to map
        if (now := os.fstat(file.fileno()).st_size) < size:
            raise FileShrankError(shrank(now))
        for at in range(0, size, HASH_WINDOW_BYTES):
            length = min(HASH_WINDOW_BYTES, size - at)
            with mmap.mmap(file.fileno(), length, prot=mmap.PROT_READ, offset=at) as mapped, memoryview(mapped) as view:
                for piece in range(0, length, _UPDATE_BYTES):
                    digest.update(view[piece : piece + _UPDATE_BYTES])
    return digest.hexdigest()


def leave_interrupts_to_the_parent() -> None:
    """Ignore Ctrl-C in a validation child: the terminal sends it to the whole process group.

    The calling process stops on it (the CLI says "interrupted" in one line) and terminates its
    children; a child that took the KeyboardInterrupt itself would print a traceback beside that.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _answer(send: Connection, path: str, size: int) -> None:
    """The hashing process: the digest, or the error that stopped it, through the pipe."""
    leave_interrupts_to_the_parent()
    # A SIGBUS here is a file cut short, which the parent reports in one line: not a crash dump
    # on the user's terminal when faulthandler is on (PYTHONFAULTHANDLER, -X faulthandler, pytest).
    faulthandler.disable()
    try:
        send.send(sha256_of(path, size))
    except OSError as error:
        send.send(error)


class Hashing:
    """A forked process computing ``sha256_of(path, size)``, started at once; :meth:`result` waits for it.

    Fork it before any thread exists in this process, and :meth:`close` it in a ``finally``.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        context = multiprocessing.get_context("fork")
        self._answers, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_answer, args=(send, str(path), size), name="validation-hash", daemon=True
        )
        self._process.start()
        send.close()  # the child's end: once the child is gone, reading says so

    def result(self) -> str:
        """The hex digest; FileShrankError or WorkerLostError when the hashing process could not give it."""
        try:
            answer: str | OSError = self._answers.recv()  # the only other end is the child's: EOF once it is gone
        except EOFError:
            self._process.join()
            raise lost(self._process, self.path, self.size) from None
        if isinstance(answer, OSError):
            raise answer
        return answer

    def close(self) -> None:
        """Stop the hashing process if it still runs (validation failed first) and reap it."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._answers.close()
