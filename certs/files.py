"""The serving pair on disk, replaced atomically for webhook.tls.ReloadingCertificate."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .authority import KeyPair


def write_pair(pair: KeyPair, cert_file: Path, key_file: Path) -> bool:
    """Write the pair where it differs from what is there; True if anything was written.

    Each file is written under a temporary name and renamed over the old one, so a reader
    sees the old file or the new one, never half of either. Unchanged files are left alone,
    so a periodic check does not make the server reload the same pair.
    """
    written = _replace(key_file, pair.key, 0o600)  # the key first: its certificate follows
    return _replace(cert_file, pair.cert, 0o644) or written


def _replace(path: Path, data: bytes, mode: int) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return True
