"""Errors that distsel reports to the user as one clear line (no traceback), and the helpers
that keep credentials out of every message."""

from __future__ import annotations

import re
import sys


class DistselError(Exception):
    """A problem with the user's input, configuration or environment."""


class ConfigError(DistselError):
    """The configuration is invalid; the message names the key."""


class InputError(DistselError):
    """An input file is missing, unreadable, corrupt, or (in strict mode) holds a bad row."""


#: The user information of a URL: s3://KEY:SECRET@bucket/... has "KEY:SECRET@".
USERINFO = re.compile(r"(?<=://)[^/@\s\"'<>]+@")
#: Shorter strings are not concealed: replacing them everywhere would garble every message.
MIN_CONCEALED = 4
_concealed: set[str] = set()


def conceal(*values: str) -> None:
    """Never show these strings (credentials) in a message that passes strip_credentials."""
    _concealed.update(value for value in values if len(value) >= MIN_CONCEALED)


def userinfo(text: str) -> list[str]:
    """The credentials that URLs in `text` carry: each whole user information and its parts."""
    found = []
    for match in USERINFO.finditer(text):
        credentials = match.group(0)[:-1]
        found += [credentials, *(part for part in credentials.split(":") if part)]
    return found


def strip_credentials(text: str) -> str:
    """`text` with URL user information (s3://***@bucket) and every concealed string as ***."""
    text = USERINFO.sub("***@", text)
    for secret in sorted(_concealed, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def credentials_in_url(url: str) -> str | None:
    """Why `url` is refused, if it carries credentials (they would end up in logs and the
    manifest); the message shows the URL without them."""
    if not USERINFO.search(url):
        return None
    return (
        f"{strip_credentials(url)}: credentials in a URL are not accepted; give them as "
        "storage_options (key, secret) or in the environment"
    )


def short(exc: BaseException, with_type: bool = True) -> str:
    """The first line of `exc`'s message without credentials, after its type name unless
    `with_type` is false (the type name stands in for an empty message)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    first = strip_credentials(lines[0])
    return f"{type(exc).__name__}: {first}" if with_type else first


def innermost(exc: BaseException) -> BaseException:
    """The worker's own exception when `exc` is a Ray task error (which keeps it as `cause`)."""
    seen = {id(exc)}
    while isinstance(cause := getattr(exc, "cause", None), BaseException) and id(cause) not in seen:
        seen.add(id(cause))
        exc = cause
    return exc


def user_error(exc: BaseException) -> DistselError | None:
    """The DistselError behind `exc`: `exc` itself, what it was raised from, or (across a Ray
    task) the worker's own error."""
    seen: set[int] = set()
    current: BaseException | None = innermost(exc)
    while current is not None and id(current) not in seen:
        if isinstance(current, DistselError):
            return current
        seen.add(id(current))
        current = current.__cause__ and innermost(current.__cause__)
    return _raised_in_worker(exc) if getattr(exc, "cause", None) is not None else None


#: How a Ray task error's text shows the worker's exception (Ray Data keeps only the text).
WORKER_ERROR = re.compile(r"^(distsel(?:\.\w+)*)\.(\w+): (.+)$", re.MULTILINE)


def _raised_in_worker(exc: BaseException) -> DistselError | None:
    for module, name, message in WORKER_ERROR.findall(str(exc)):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, DistselError):
            return cls(message)
    return None
