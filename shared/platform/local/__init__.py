"""The local workspace: ftpilot's ML-platform port on this machine (see ``platform``)."""

from shared.platform.local.platform import LocalPlatform

__all__ = ["LocalPlatform"]
