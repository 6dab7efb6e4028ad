"""Endpoint keys and deployment secrets: generated with ``secrets``, owner-only files, never logged.

A managed endpoint authenticates callers with a key (``Authorization: Bearer <key>``). Locally the
key lives in ``data_dir/keys/<endpoint>.key``, readable only by its owner (the folder too), so the
router can read it at start-up and the adapter at invoke time; it is never passed on a command
line (visible to every user in ``ps``), in the environment, or into the state database.

Each deployment has a secret of its own, ``keys/<endpoint>/<deployment>.secret``, that only it and
its router read: the router sends it with every request it forwards and the deployment answers
nothing without it, so a deployment's port (listed in the state database, visible with ``ss``)
is no way around the endpoint key.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from shared.platform.port import NotFoundError

KEY_BYTES = 32


def key_path(keys_dir: Path, endpoint: str) -> Path:
    return keys_dir / f"{endpoint}.key"


def secret_path(keys_dir: Path, endpoint: str, deployment: str) -> Path:
    return keys_dir / endpoint / f"{deployment}.secret"


def _create(keys_dir: Path, path: Path) -> None:
    """A new random secret in ``path`` unless it has one (a repeated create keeps the first)."""
    for folder in dict.fromkeys((keys_dir, path.parent)):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secrets.token_urlsafe(KEY_BYTES))


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise NotFoundError(f"{what} has no key") from None


def create_key(keys_dir: Path, endpoint: str) -> None:
    """Give ``endpoint`` a key unless it has one."""
    _create(keys_dir, key_path(keys_dir, endpoint))


def read_key(keys_dir: Path, endpoint: str) -> str:
    return _read(key_path(keys_dir, endpoint), f"endpoint {endpoint}")


def delete_key(keys_dir: Path, endpoint: str) -> None:
    """The endpoint's key and its deployments' secrets."""
    key_path(keys_dir, endpoint).unlink(missing_ok=True)
    shutil.rmtree(keys_dir / endpoint, ignore_errors=True)


def create_deployment_secret(keys_dir: Path, endpoint: str, deployment: str) -> None:
    _create(keys_dir, secret_path(keys_dir, endpoint, deployment))


def read_deployment_secret(keys_dir: Path, endpoint: str, deployment: str) -> str:
    return _read(secret_path(keys_dir, endpoint, deployment), f"deployment {endpoint}/{deployment}")


def delete_deployment_secret(keys_dir: Path, endpoint: str, deployment: str) -> None:
    secret_path(keys_dir, endpoint, deployment).unlink(missing_ok=True)
