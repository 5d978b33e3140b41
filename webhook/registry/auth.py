"""Registry authentication as a flow.

`RegistryAuth.flow` is a generator that yields requests and is sent their
responses, so the 401 -> token -> retry dance reads top to bottom while the
transport alone does I/O. A flow may yield a token request (to the realm a
Bearer challenge named) before yielding the original request again.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .cache import ExpiringCache, footprint
from .credentials import Credential
from .errors import Unauthorized

DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, per the token spec when expires_in is absent
CLIENT_ID = "image-backup-webhook"
# Tokens kept per registry: one per scope (repository) and credential. A token server's
# answer may be of any size, so the bound is in bytes too.
MAX_TOKENS = 1024
TOKEN_CACHE_BYTES = 4 << 20


@dataclass(slots=True)
class Request:
    method: str
    url: URL
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    data: Any = None
    is_token_request: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    body: bytes = b""  # read only for token requests


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


_CHALLENGE_PARAM = re.compile(r'([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {
        m[1].lower(): m[2] if m[2] is not None else m[3] for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


class RegistryAuth:
    """Authentication state for one registry: the scheme it asked for, and tokens by scope
    and by the credential they were issued for (a token earned with one workload's pull
    secret must never serve a request made for another)."""

    def __init__(
        self,
        token_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_file = token_file
        self._basic = False  # the registry challenged Basic: send it up front from now on
        self._tokens: ExpiringCache[tuple[tuple[str, ...], Credential | None], str] = ExpiringCache(
            MAX_TOKENS, clock, max_bytes=TOKEN_CACHE_BYTES, weigh=footprint
        )

    def flow(
        self, request: Request, credential: Credential | None, scopes: Sequence[str]
    ) -> Generator[Request, Response, None]:
        scope_key = tuple(sorted(scopes))
        sent = self._preemptive_header(credential, scope_key)
        if sent:
            request.headers["Authorization"] = sent
        response = yield request
        if response.status != 401:
            return
        challenge = _first_challenge(response)
        if challenge is None or self._token_file or (credential and credential.registry_token):
            return  # nothing more we could present; the caller reports the 401
        if challenge.scheme == "basic":
            header = _basic_header(credential)
            if header is None or header == sent:
                return
            self._basic = True
            request.headers["Authorization"] = header
            yield request
            return
        # Bearer: fetch a token for exactly our scopes (a cached one has been refused
        # if we get here with it, so this is also the one refresh on 401).
        self._tokens.discard((scope_key, credential))
        token_response = yield _token_request(challenge, credential, scope_key)
        token = self._store_token(token_response, scope_key, credential)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _preemptive_header(
        self, credential: Credential | None, scope_key: tuple[str, ...]
    ) -> str | None:
        if self._token_file:
            # Read at each use: a service-account token rotates on disk.
            try:
                return f"Bearer {Path(self._token_file).read_text().strip()}"
            except OSError as exc:
                raise Unauthorized(
                    f"cannot read tokenFile {self._token_file}: {exc.strerror}"
                ) from None
        if credential is not None and credential.registry_token:
            return f"Bearer {credential.registry_token}"
        token = self._tokens.get((scope_key, credential))
        if token is not None:
            return f"Bearer {token[0]}"
        if self._basic:
            return _basic_header(credential)
        return None

    def _store_token(
        self, response: Response, scope_key: tuple[str, ...], credential: Credential | None
    ) -> str:
        scopes = " ".join(scope_key)
        if response.status in (401, 403):
            raise Unauthorized(
                f"the token service refused the credentials (HTTP {response.status}) for {scopes}"
            )
        if response.status != 200:
            raise Unauthorized(f"the token service answered HTTP {response.status} for {scopes}")
        try:
            document = orjson.loads(response.body)
            value = document.get("token") or document.get("access_token")
            lifetime = float(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            value = None
        if not isinstance(value, str) or not value:
            raise Unauthorized(f"the token service gave no token for {scopes}")
        # Renew a little early so a token does not expire between check and use.
        margin = min(10.0, lifetime / 10)
        self._tokens.put((scope_key, credential), value, lifetime - margin)
        return value


def _first_challenge(response: Response) -> Challenge | None:
    for header in response.headers.getall("WWW-Authenticate", []):
        challenge = parse_challenge(header)
        if challenge is not None:
            return challenge
    return None


def _basic_header(credential: Credential | None) -> str | None:
    if credential is None or credential.username is None or credential.password is None:
        return None
    pair = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _token_request(
    challenge: Challenge, credential: Credential | None, scope_key: tuple[str, ...]
) -> Request:
    realm = challenge.params.get("realm")
    if not realm:
        raise Unauthorized("the registry asked for a Bearer token but named no token service")
    service = challenge.params.get("service")
    if credential is not None and credential.identity_token:
        # OAuth2 refresh-token grant, as `docker login` with an identity token does.
        form = {
            "grant_type": "refresh_token",
            "refresh_token": credential.identity_token,
            "client_id": CLIENT_ID,
            "scope": " ".join(scope_key),
        }
        if service:
            form["service"] = service
        return Request("POST", URL(realm), CIMultiDict(), form, is_token_request=True)
    query: list[tuple[str, str]] = [("scope", scope) for scope in scope_key]
    if service:
        query.insert(0, ("service", service))
    headers: CIMultiDict[str] = CIMultiDict()
    basic = _basic_header(credential)
    if basic:
        headers["Authorization"] = basic
    return Request("GET", URL(realm).extend_query(query), headers, is_token_request=True)
