"""Which workloads are left alone: excluded namespaces (names or globs) and the skip
annotation. Admission and the backfill pass ask the same question of every object."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

SKIP_ANNOTATION = "image-backup.io/skip"


class Exclusions:
    def __init__(self, namespaces: Sequence[str]) -> None:
        # Most entries are plain names: a set answers those without matching patterns.
        self._names = frozenset(n for n in namespaces if not _is_glob(n))
        self._globs = tuple(n for n in namespaces if _is_glob(n))

    def excludes(self, namespace: str, annotations: Mapping[str, str] | None) -> bool:
        if namespace in self._names:
            return True
        if self._globs and any(fnmatch.fnmatchcase(namespace, p) for p in self._globs):
            return True
        return annotations is not None and annotations.get(SKIP_ANNOTATION) == "true"


def _is_glob(pattern: str) -> bool:
    return any(character in pattern for character in "*?[")
