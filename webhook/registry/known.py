"""Where blobs are known to live, so a blob the backup registry already holds is mounted."""

from __future__ import annotations

from collections import OrderedDict

from .client import Repository

MAX_PLACES = 4  # a few recent repositories per blob are plenty to mount from


class KnownBlobs:
    """A bounded digest -> repositories index, most recently seen last."""

    def __init__(self, max_digests: int = 200_000) -> None:
        self._places: OrderedDict[str, list[Repository]] = OrderedDict()
        self._max_digests = max_digests

    def add(self, repo: Repository, digest: str) -> None:
        places = self._places.setdefault(digest, [])
        if repo in places:
            places.remove(repo)
        places.append(repo)
        del places[:-MAX_PLACES]
        self._places.move_to_end(digest)
        while len(self._places) > self._max_digests:
            self._places.popitem(last=False)

    def mount_source(self, digest: str, into: Repository) -> Repository | None:
        """Another repository on the same registry that holds `digest`, if one is known."""
        for repo in reversed(self._places.get(digest, ())):
            if repo.host == into.host and repo.path != into.path:
                return repo
        return None
