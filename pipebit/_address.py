"""Where a pipe lives: this machine's shared memory, or a Redis server.

A pipe name is one of:

* a plain name (``"data_pipe"``): shared memory on this machine -- unless the
  environment variable ``PIPEBIT_URL`` holds a Redis server's URL
  (``redis://host:6379/0``), which then takes every plain name there;
* a URL ``redis://[user:password@]host[:port][/db]/<name>`` (``rediss://`` for
  TLS): pipe ``<name>`` on that server.  The port defaults to 6379, the
  database to 0.

Pure: no I/O.  Parsing fails with :class:`InvalidNameError` naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from typing import Union

from ._limits import validate_name
from .errors import InvalidNameError

ENV_URL = "PIPEBIT_URL"
SCHEMES = ("redis", "rediss")
DEFAULT_PORT = 6379
URL_FORM = "redis://[user:password@]host[:port][/db]/<pipe name>"
SERVER_FORM = "redis://[user:password@]host[:port][/db]"


@dataclasses.dataclass(frozen=True)
class Server:
    """A Redis server and database, as a URL names it."""

    host: str
    port: int
    db: int
    tls: bool
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)

    def __str__(self) -> str:
        """The URL without credentials: safe to print."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


@dataclasses.dataclass(frozen=True)
class RedisPipe:
    """Pipe ``name`` on ``server``."""

    server: Server
    name: str

    def __str__(self) -> str:
        return f"{self.server}/{self.name}"


Address = Union[str, RedisPipe]
"""A plain (shared-memory) pipe name, or a pipe on a Redis server."""


def is_url(text: object) -> bool:
    """Whether ``text`` is meant as a Redis URL (by its scheme)."""
    return isinstance(text, str) and text.lower().startswith(tuple(f"{s}://" for s in SCHEMES))


def env_server() -> Server | None:
    """The server ``PIPEBIT_URL`` names, or ``None`` when it is unset or empty."""
    url = os.environ.get(ENV_URL, "")
    if not url:
        return None
    server, rest = _split(url, f"the environment variable {ENV_URL}")
    if rest:
        raise InvalidNameError(
            f"{ENV_URL}={_hide_password(url)!r} names a pipe ({'/'.join(rest)!r}); it should name a server "
            f"only: {SERVER_FORM}"
        )
    return server


def parse(name: object) -> Address:
    """Where pipe ``name`` lives.  A plain name is returned as it is (validated when it
    selects shared memory); a URL, or a plain name under ``PIPEBIT_URL``, gives a
    :class:`RedisPipe`."""
    if is_url(name):
        assert isinstance(name, str)
        server, rest = _split(name, "pipe URL")
        if len(rest) != 1:
            raise InvalidNameError(f"pipe URL {_hide_password(name)!r} should have the form {URL_FORM}")
        return RedisPipe(server, validate_name(rest[0]))
    default = env_server() if isinstance(name, str) else None
    if default is None:
        return validate_name(name)
    return RedisPipe(default, validate_name(name))


def parse_server(url: str) -> Server:
    """A server URL (``redis://host:port/db``) for commands that list a whole server."""
    if not is_url(url):
        raise InvalidNameError(f"{_hide_password(url)!r} is not a Redis URL: {SERVER_FORM}")
    server, rest = _split(url, "server URL")
    if rest:
        raise InvalidNameError(f"{_hide_password(url)!r} names a pipe; a server URL is {SERVER_FORM}")
    return server


def _hide_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


def _split(url: str, what: str) -> tuple[Server, list[str]]:
    """The server of ``url`` and the path segments after its database number."""
    shown = _hide_password(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidNameError(f"{what} {shown!r} is not a valid URL ({exc}): {URL_FORM}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidNameError(f"{what} {shown!r} is not a Redis URL: {URL_FORM}")
    if not parts.hostname:
        raise InvalidNameError(f"{what} {shown!r} names no host: {URL_FORM}")
    if ":" not in parts.hostname:  # not an IPv6 address: a host name must have an IDNA form to be looked up
        try:
            parts.hostname.encode("idna")
        except UnicodeError as exc:
            raise InvalidNameError(f"{what} {shown!r} names a host that cannot be looked up ({exc})") from None
    if parts.query or parts.fragment:
        raise InvalidNameError(f"{what} {shown!r}: query strings and fragments are not supported")
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/")[1:]]
    if segments and segments[-1] == "" and what != "pipe URL":
        segments.pop()  # a server URL may end with a slash; a pipe URL must end with the name
    db = 0
    if segments and segments[0].isdigit() and (len(segments) > 1 or what != "pipe URL"):
        db = int(segments.pop(0))
    unquote = urllib.parse.unquote
    server = Server(
        host=parts.hostname,
        port=DEFAULT_PORT if port is None else port,
        db=db,
        tls=parts.scheme.lower() == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
    return server, segments
