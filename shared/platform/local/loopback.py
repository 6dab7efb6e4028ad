"""Ports and health checks on 127.0.0.1, where every local server listens (and nowhere else)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

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


def healthy(port: int) -> bool:
    """Whether the server on ``port`` answers ``GET /health`` with 200."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
