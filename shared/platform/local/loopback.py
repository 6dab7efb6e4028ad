"""Ports and health checks on 127.0.0.1, where every local server listens (and nowhere else)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Mapping

HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 1.0


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; the server binds it moments later)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound right now (a restart reuses a recorded port only then)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def answers(port: int, path: str, headers: Mapping[str, str] | None = None) -> int | None:
    """The status the server on ``port`` answers ``GET path`` with, or None when nothing answers."""
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None
