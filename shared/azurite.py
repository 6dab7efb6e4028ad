"""Start and find Azurite, the Azure Storage emulator, for local runs and the tests.

Azurite comes from npm (``node_modules/.bin/azurite`` after ``npm ci``). Each caller gets
its own process on free loopback ports and its own data folder, so test runs and a local
host never share state by accident.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ACCOUNT = "devstoreaccount1"
# Azurite's fixed, publicly documented development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
REPO = Path(__file__).resolve().parents[1]


class AzuriteNotFound(RuntimeError):
    pass


def connection_string(blob: int, queue: int, table: int, host: str = "127.0.0.1") -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://{host}:{blob}/{ACCOUNT};"
        f"QueueEndpoint=http://{host}:{queue}/{ACCOUNT};"
        f"TableEndpoint=http://{host}:{table}/{ACCOUNT};"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def executable() -> str:
    local = REPO / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if found:
        return found
    raise AzuriteNotFound("Azurite is not installed: run `make setup` (it runs `npm ci` in the repository)")


@dataclass
class Azurite:
    """A running Azurite process and how to reach it."""

    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int
    location: Path

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self, grace_s: float = 10) -> None:
        """Terminate, then kill after ``grace_s``.

        Azurite 3.37 does not exit on SIGTERM once it has served a request; the grace period is
        what lets its store save the last writes (it autosaves every few seconds) before the kill.
        Throw-away data (tests) needs none.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(location: Path, ports: tuple[int, int, int] | None = None, timeout_s: float = 30) -> Azurite:
    """Start Azurite with its data under ``location`` and wait until all three services listen."""
    blob, queue, table = ports or (free_port(), free_port(), free_port())
    location.mkdir(parents=True, exist_ok=True)
    log = (location / "azurite.log").open("ab")
    process = subprocess.Popen(
        [
            executable(),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--location",
            str(location),
            "--blobHost",
            "127.0.0.1",
            "--queueHost",
            "127.0.0.1",
            "--tableHost",
            "127.0.0.1",
            "--blobPort",
            str(blob),
            "--queuePort",
            str(queue),
            "--tablePort",
            str(table),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not all(listening(p) for p in (blob, queue, table)):
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited with {process.returncode}; see {location / 'azurite.log'}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Azurite did not listen within {timeout_s:.0f} s; see {location / 'azurite.log'}")
        time.sleep(0.1)
    return Azurite(process, blob, queue, table, location)
