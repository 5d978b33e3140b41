"""Where and how a registry is reached: what the configuration says, without the HTTP stack.

Kept apart from the transport so that reading a configuration never loads aiohttp: a
command reads its configuration while the HTTP stack loads beside it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from ..reference import DOCKER_HUB

DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How one registry (named as in image references) is actually reached."""

    host: str
    url: str | None = None  # "https://mirror.internal:5000"; None: https://host
    insecure: bool = False  # allow plain HTTP and unverified TLS for this registry only
    ca_file: str | None = None  # trusted in addition to the system CAs
    token_file: str | None = None  # bearer token re-read at each use

    @classmethod
    def default(cls, host: str) -> Endpoint:
        """A registry the configuration does not name: HTTPS, the system CAs."""
        return cls(host, DOCKER_HUB_ENDPOINT if host == DOCKER_HUB else None)


def verifying_context(ca_file: str) -> ssl.SSLContext:
    """The system CAs and `ca_file`. Loading them is file I/O and parsing (some 20 ms),
    without the GIL: callers on an event loop build it on a thread."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context
