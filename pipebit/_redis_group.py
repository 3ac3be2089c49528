"""Receiver groups of a Safe pipe on a Redis server (not written yet: see docs/groups.md)."""

from __future__ import annotations

from typing import Any, NoReturn

from ._address import RedisPipe
from .errors import InvalidArgumentError


def _not_yet(address: RedisPipe, group: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"pipe {str(address)!r}, receiver group {group!r}: receiver groups work on shared-memory pipes only "
        "in this version; over Redis they are not implemented yet"
    )


def open_member(address: RedisPipe, *, group: str, **options: Any) -> NoReturn:
    """Refuses, naming the pipe and the group."""
    raise _not_yet(address, group)


def remove_group(address: RedisPipe, group: str) -> NoReturn:
    raise _not_yet(address, group)
