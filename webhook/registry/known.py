"""Where blobs are known to live, so a blob the backup registry already holds is mounted."""

from __future__ import annotations

from .cache import ExpiringCache, footprint
from .client import Repository

MAX_PLACES = 4  # a few recent repositories per blob are plenty to mount from
MAX_DIGESTS = 200_000
KNOWN_BLOBS_BYTES = 32 << 20


class KnownBlobs:
    """A bounded digest -> repositories index, most recently seen last; bounded in bytes
    too, as repository names come from workloads and may be long."""

    def __init__(self, max_digests: int = MAX_DIGESTS, max_bytes: int = KNOWN_BLOBS_BYTES) -> None:
        self._places: ExpiringCache[str, tuple[Repository, ...]] = ExpiringCache(
            max_digests, max_bytes=max_bytes, weigh=footprint
        )

    def __len__(self) -> int:
        return len(self._places)

    @property
    def weight(self) -> int:
        return self._places.weight

    def add(self, repo: Repository, digest: str) -> None:
        known = self._places.get(digest)
        places = tuple(place for place in known[0] if place != repo) if known else ()
        self._places.put(digest, (*places, repo)[-MAX_PLACES:], None)

    def mount_source(self, digest: str, into: Repository) -> Repository | None:
        """Another repository on the same registry that holds `digest`, if one is known."""
        known = self._places.get(digest)
        for repo in reversed(known[0] if known else ()):
            if repo.host == into.host and repo.path != into.path:
                return repo
        return None
