"""Users and policy of the session token server (see ``tests/conftest.py``)."""

from __future__ import annotations

import secrets

__all__ = ["PUSHER", "PUSHER_PASSWORD", "READER", "READER_PASSWORD", "TOKEN_POLICY"]

PUSHER = "pusher"  # pull + push + delete on every repository
READER = "reader"  # pull only
PUSHER_PASSWORD = "pusher-" + secrets.token_urlsafe(9)
READER_PASSWORD = "reader-" + secrets.token_urlsafe(9)
TOKEN_POLICY: dict[str | None, dict[str, set[str]]] = {
    PUSHER: {"*": {"pull", "push", "delete", "*"}},
    READER: {"*": {"pull"}},
    None: {},  # anonymous: nothing
}
