"""Checking that a ``begin_*`` call starts its operation and returns instead of waiting for it."""

from __future__ import annotations

import threading
from collections.abc import Callable


def promptly(call: Callable[[], object], limit_s: float = 20.0) -> None:
    """Run ``call()``; fail if it has not returned within ``limit_s`` (its operation is left unfinished)."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # handed to the test thread
            errors.append(error)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(limit_s), "a begin_* call waited for its long-running operation"
    if errors:
        raise errors[0]
