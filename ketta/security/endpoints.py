"""Comparing endpoints: scheme, host, port and path as a key's destination is judged.

Used by the key binding (:mod:`ketta.providers.key_binding`: a stored key goes only to its own
provider) and by the operator's keys (:mod:`ketta.security.operator_keys`: an env key only to its
own endpoint); kept here, below both, so neither layer imports the other for it.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class Endpoint(NamedTuple):
    scheme: str
    host: str
    port: int | None
    path: str


def normalise(url: str | None) -> Endpoint | None:
    """(scheme, host, port, path) as compared; None if it is not a URL with a host."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".").lower()
    if not scheme or not host:
        return None
    return Endpoint(scheme, host, port or DEFAULT_PORTS.get(scheme), parts.path.rstrip("/"))


def same_origin(first: str | None, second: str | None) -> bool:
    """True if both are URLs of one scheme, host and port (a stored key may follow a path change)."""
    a, b = normalise(first), normalise(second)
    return a is not None and b is not None and a[:3] == b[:3]


def is_under(endpoint: str | None, base_url: str | None) -> bool:
    """True if ``endpoint`` is ``base_url`` or a path below it on the same origin."""
    target, base = normalise(endpoint), normalise(base_url)
    if target is None or base is None or target[:3] != base[:3]:
        return False
    return target.path == base.path or target.path.startswith(base.path + "/")
