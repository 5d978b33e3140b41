"""A Docker registry token server for tests.

Implements https://distribution.github.io/distribution/spec/auth/token/ (GET /token) and the
password grant of the OAuth2 variant (POST /token), served over HTTPS on 127.0.0.1 from a
background thread. Tokens are ES256 JWTs whose signing certificate (self-signed) is both in
the JWT header ``x5c`` and in the file the registry uses as ``auth.token.rootcertbundle``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.loopthread import ServedApp
from tests.support.tls import generate_tls, self_signed_certificate, server_ssl_context

__all__ = [
    "Access",
    "Policy",
    "PolicyFunc",
    "TokenRequest",
    "TokenServer",
    "parse_scope",
]

#: (user or None for anonymous, resource type, resource name) -> allowed actions
PolicyFunc = Callable[[str | None, str, str], Iterable[str]]
#: {user or None: {fnmatch glob on the resource name: allowed actions}}
PolicyDict = Mapping[str | None, Mapping[str, Iterable[str]]]
Policy = PolicyFunc | PolicyDict


@dataclass(frozen=True)
class Access:
    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class TokenRequest:
    """One request to the token endpoint, as recorded in :attr:`TokenServer.log`."""

    method: str  # "GET" or "POST"
    user: str | None  # None = anonymous (also for a failed login the *claimed* name is kept)
    service: str | None
    scopes: tuple[str, ...]  # as requested
    granted: tuple[Access, ...]  # empty when refused
    status: int  # 200, 401, or an injected failure status
    time: float = field(default_factory=time.time)


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]]:
    """``"repository:foo/bar:pull,push"`` -> ``("repository", "foo/bar", ("pull", "push"))``.

    The name may itself contain ``:`` (e.g. a registry host with a port).
    """
    rtype, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not rtype or not name:
        raise ValueError(f"malformed scope {scope!r}")
    rtype = rtype.split("(", 1)[0]  # "repository(plugin)" -> "repository"
    return rtype, name, tuple(a for a in actions.split(",") if a)


def _policy_func(policy: Policy) -> PolicyFunc:
    if callable(policy):
        return policy
    table = policy

    def lookup(user: str | None, rtype: str, name: str) -> Iterable[str]:
        allowed: set[str] = set()
        for pattern, actions in table.get(user, {}).items():
            if fnmatch.fnmatchcase(name, pattern):
                allowed.update(actions)
        return allowed

    return lookup


class TokenServer:
    """Token server running in a background thread. Use :meth:`start`; call :meth:`stop`.

    ``users``, ``policy`` and ``expires_in`` are plain attributes and may be changed while
    the server runs (the change applies to the next request).
    """

    def __init__(
        self,
        workdir: str,
        *,
        users: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        expires_in: int = 300,
        issuer: str = "image-backup-webhook-test-issuer",
        tls_dir: str | None = None,
    ) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.workdir = os.path.abspath(workdir)
        self.users: dict[str, str] = dict(users or {})
        self.refresh_tokens: dict[str, str] = {}  # OAuth2 refresh token -> user
        self.policy: Policy = policy if policy is not None else {}
        self.expires_in = expires_in
        self.issuer = issuer
        self._defaults = (dict(self.users), self.policy, expires_in)
        self._log: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._failures: list[list[Any]] = []  # [status, remaining, body]

        tls = generate_tls(tls_dir or os.path.join(self.workdir, "tls"))
        self.ca_file = tls.ca_file

        self._signing_key = ec.generate_private_key(ec.SECP256R1())
        cert = self_signed_certificate(self._signing_key, "image-backup-webhook token signer")
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.signing_cert_file = os.path.join(self.workdir, "token-signing.crt")
        with open(self.signing_cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

        app = web.Application()
        app.router.add_get("/token", self._handle)
        app.router.add_post("/token", self._handle)
        self._served = ServedApp(app, name="token-server", ssl_context=server_ssl_context(tls))
        self.port = self._served.port
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"https://{self.host}"
        self.realm = f"{self.url}/token"

    @classmethod
    def start(
        cls,
        workdir: str,
        *,
        users: Mapping[str, str] | None = None,
        policy: Policy | None = None,
        expires_in: int = 300,
        tls_dir: str | None = None,
    ) -> TokenServer:
        return cls(workdir, users=users, policy=policy, expires_in=expires_in, tls_dir=tls_dir)

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test-facing helpers -------------------------------------------------------------

    @property
    def log(self) -> list[TokenRequest]:
        """A snapshot of the requests received so far (oldest first)."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def reset(self) -> None:
        """Restore the users, policy and expires_in given at start; drop failures and log."""
        users, policy, expires_in = self._defaults
        self.users = dict(users)
        self.refresh_tokens = {}
        self.policy = policy
        self.expires_in = expires_in
        with self._lock:
            self._failures.clear()
            self._log.clear()

    def requests_for(self, service: str | None = None) -> list[TokenRequest]:
        return [r for r in self.log if service is None or r.service == service]

    def fail(self, status: int, times: int = 1, body: bytes = b"") -> None:
        """Answer the next ``times`` token requests with ``status`` (e.g. 500)."""
        with self._lock:
            self._failures.append([status, times, body])

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def issue(
        self, user: str | None, service: str, scopes: Iterable[str], expires_in: int | None = None
    ) -> str:
        """Mint a token directly (what the endpoint would return), without logging."""
        access = self._grant(user, list(scopes))
        return self._sign(
            user, service, access, self.expires_in if expires_in is None else expires_in
        )

    # --- implementation --------------------------------------------------------------------

    def _grant(self, user: str | None, scopes: list[str]) -> tuple[Access, ...]:
        func = _policy_func(self.policy)
        granted: list[Access] = []
        for scope in scopes:
            try:
                rtype, name, requested = parse_scope(scope)
            except ValueError:
                continue
            allowed = set(func(user, rtype, name))
            granted.append(Access(rtype, name, tuple(a for a in requested if a in allowed)))
        return tuple(granted)

    def _sign(
        self, user: str | None, service: str, access: tuple[Access, ...], expires_in: int
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service,
            "exp": now + expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [a.claim() for a in access],
        }
        return jwt.encode(claims, self._signing_key, algorithm="ES256", headers={"x5c": self._x5c})

    def _check_login(self, username: str, password: str) -> bool:
        expected = self.users.get(username)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _take_failure(self) -> tuple[int, bytes] | None:
        with self._lock:
            while self._failures:
                status, remaining, body = self._failures[0]
                if remaining <= 0:
                    self._failures.pop(0)
                    continue
                self._failures[0][1] -= 1
                return int(status), bytes(body)
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        user: str | None = None
        password: str | None = None
        scopes: list[str] = []
        service: str | None = request.query.get("service")
        for s in request.query.getall("scope", []):
            scopes.extend(s.split())

        if request.method == "POST":
            form = await request.post()
            grant_type = str(form.get("grant_type", ""))
            service = str(form.get("service", service or "")) or None
            for value in form.getall("scope", []):
                scopes.extend(str(value).split())
            if grant_type == "refresh_token":
                # An identity token (docker login with OAuth): it stands for a user.
                user = self.refresh_tokens.get(str(form.get("refresh_token", "")))
                if user is None:
                    self._record(TokenRequest("POST", None, service, tuple(scopes), (), 401))
                    return web.json_response({"error": "invalid_grant"}, status=401)
                password = self.users.get(user, "")
            elif grant_type != "password":
                self._record(TokenRequest("POST", None, service, tuple(scopes), (), 400))
                return web.json_response(
                    {"error": "unsupported_grant_type", "error_description": grant_type},
                    status=400,
                )
            else:
                user = str(form.get("username", "")) or None
                password = str(form.get("password", ""))
        else:
            header = request.headers.get("Authorization", "")
            if header.lower().startswith("basic "):
                try:
                    raw = base64.b64decode(header[6:].strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raw = ":"
                u, _, password = raw.partition(":")
                user = u or None

        failure = self._take_failure()
        if failure is not None:
            self._record(TokenRequest(request.method, user, service, tuple(scopes), (), failure[0]))
            return web.Response(status=failure[0], body=failure[1])

        if user is not None and not self._check_login(user, password or ""):
            self._record(TokenRequest(request.method, user, service, tuple(scopes), (), 401))
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="token-server"'},
            )

        access = self._grant(user, scopes)
        expires_in = self.expires_in
        token = self._sign(user, service or "", access, expires_in)
        self._record(TokenRequest(request.method, user, service, tuple(scopes), access, 200))
        issued = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": expires_in,
                "issued_at": issued,
            }
        )
