"""A registry with OCI 1.1's referrers API: a proxy in front of a Distribution 2.8, which has
none.

:class:`ReferrersProxy` is a :class:`~tests.support.faultproxy.FaultProxy` (same forwarding,
log, credentials file and fault rules) that adds what distribution-spec 1.1 asks of a
registry supporting referrers:

* a manifest PUT whose body has a ``subject`` is forwarded; once the registry has stored it
  (201) the proxy remembers the referrer and answers ``OCI-Subject: <subject digest>``
  (unless ``announce_subject`` is False: a registry serving the API without saying so);
* ``GET /v2/<name>/referrers/<digest>[?artifactType=...]`` is answered by the proxy: an OCI
  image index of the remembered referrers of ``digest`` that the registry still holds (each
  checked with a HEAD upstream), filtered by ``artifactType`` (``OCI-Filters-Applied``),
  sorted by digest and paginated ``page_size`` at a time with ``Link: <...>; rel="next"``.

The registry keeps deciding who may read: the proxy asks it about the subject with the
client's credentials first and relays a 401/403 (with its ``WWW-Authenticate``).

Referrers pushed around the proxy (through the registry's backdoor, say) are unknown to it
until :meth:`ReferrersProxy.remember` is told of them. Faults that alter a forwarded answer
(corrupt, reset_after, drop_header) do not apply to the referrers API, which is not
forwarded; status, serve, delay and cut_request do.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

import aiohttp
from aiohttp import web

from tests.support.artifacts import DIGEST_RE, referrer_descriptor, subject_of
from tests.support.faultproxy import FaultProxy, ProxyLogEntry, Rule
from tests.support.images import ALL_MANIFEST_TYPES, OCI_INDEX

if TYPE_CHECKING:
    from tests.support.registries import Registry

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "ReferrersPage",
    "ReferrersProxy",
    "ReferrersProxyFactory",
    "get_referrers",
]

DEFAULT_PAGE_SIZE = 1000
_REFERRERS = re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)")
_MANIFEST = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class ReferrersProxyFactory(Protocol):
    """Type of the ``referrers_proxy`` fixture."""

    def __call__(
        self,
        target: Registry | str,
        ca_file: str | None = None,
        *,
        credentials: bool = True,
        page_size: int = DEFAULT_PAGE_SIZE,
        announce_subject: bool = True,
    ) -> ReferrersProxy: ...


def _error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json")


class ReferrersProxy(FaultProxy):
    """A registry with the referrers API, made of a Distribution and this proxy.

    ``page_size`` and ``announce_subject`` are read per request, so a test may change them.
    """

    def __init__(
        self,
        upstream_url: str,
        ca_file: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        announce_subject: bool = True,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size
        self.announce_subject = announce_subject
        # (repository, subject digest) -> referrer digest -> descriptor
        self._referrers: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._referrers_lock = threading.Lock()
        super().__init__(upstream_url, ca_file, username=username, password=password)

    @classmethod
    def start(
        cls,
        upstream_url: str,
        ca_file: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        announce_subject: bool = True,
    ) -> Self:
        return cls(
            upstream_url,
            ca_file,
            username=username,
            password=password,
            page_size=page_size,
            announce_subject=announce_subject,
        )

    # --- what the proxy knows ------------------------------------------------------------

    def remember(
        self, repository: str, manifest_bytes: bytes, media_type: str | None = None
    ) -> dict[str, Any] | None:
        """Record a referrer as if it had been pushed through the proxy (for one pushed
        around it). Returns its descriptor, or None if the manifest has no subject."""
        subject = subject_of(manifest_bytes)
        if subject is None:
            return None
        descriptor = referrer_descriptor(manifest_bytes, media_type)
        with self._referrers_lock:
            known = self._referrers.setdefault((repository, subject), {})
            known[descriptor["digest"]] = descriptor
        return descriptor

    def referrers(self, repository: str, subject_digest: str) -> list[dict[str, Any]]:
        """The remembered referrers of a digest, sorted by digest (whether or not the
        registry still holds them)."""
        with self._referrers_lock:
            known = self._referrers.get((repository, subject_digest), {})
            return [dict(known[d]) for d in sorted(known)]

    @property
    def seen_referrer_requests(self) -> list[ProxyLogEntry]:
        """The referrers API requests the proxy got, oldest first."""
        return [e for e in self.log if _REFERRERS.fullmatch(e.path)]

    # --- serving -------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        rule: Rule | None,
        *,
        body: bytes | None = None,
        on_response: Callable[[aiohttp.ClientResponse], Mapping[str, str]] | None = None,
    ) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and (m := _REFERRERS.fullmatch(request.path)):
            return await self._answer_referrers(request, m["name"], m["digest"])
        if request.method != "PUT" or not (m := _MANIFEST.fullmatch(request.path)):
            return await super()._forward(request, rule, body=body, on_response=on_response)

        if body is None:
            body = await request.read()  # a manifest: small
        repository, manifest = m["name"], body
        subject = subject_of(manifest)
        media_type = request.headers.get("Content-Type", "").split(";")[0].strip() or None

        def announce(up: aiohttp.ClientResponse) -> Mapping[str, str]:
            headers = dict(on_response(up)) if on_response is not None else {}
            if subject is not None and up.status == 201:
                self.remember(repository, manifest, media_type)
                if self.announce_subject:
                    headers["OCI-Subject"] = subject
            return headers

        return await super()._forward(request, rule, body=body, on_response=announce)

    async def _head_manifest(
        self, name: str, reference: str, auth: Mapping[str, str]
    ) -> tuple[int, list[tuple[str, str]]]:
        async with self._get_session().head(
            f"{self.upstream_url}/v2/{name}/manifests/{reference}",
            headers={"Accept": ", ".join(ALL_MANIFEST_TYPES), **auth},
            allow_redirects=False,
        ) as up:
            return up.status, self._response_headers(up)

    async def _answer_referrers(
        self, request: web.Request, name: str, digest: str
    ) -> web.StreamResponse:
        resp = await self._referrers_response(request, name, digest)
        self._record(request, resp.status, None)
        return resp

    async def _referrers_response(
        self, request: web.Request, name: str, digest: str
    ) -> web.Response:
        if not DIGEST_RE.fullmatch(digest):
            return _error(400, "DIGEST_INVALID", f"invalid digest {digest!r}")
        auth = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        try:
            # the registry decides who may read: ask it about the subject as the client
            status, up_headers = await self._head_manifest(name, digest, auth)
            if status not in (200, 404):
                keep = {"www-authenticate", "docker-distribution-api-version"}
                return web.Response(
                    status=status, headers=[(k, v) for k, v in up_headers if k.lower() in keep]
                )
            listed = []
            for descriptor in self.referrers(name, digest):
                status, _ = await self._head_manifest(name, descriptor["digest"], auth)
                if status == 200:  # drop those the registry no longer has
                    listed.append(descriptor)
        except (aiohttp.ClientError, OSError) as e:
            return web.Response(status=502, text=f"referrers proxy: upstream unreachable: {e}\n")

        headers = {"Content-Type": OCI_INDEX, "Docker-Distribution-API-Version": "registry/2.0"}
        artifact_types = request.query.getall("artifactType", [])
        if artifact_types:
            listed = [d for d in listed if d.get("artifactType") in artifact_types]
            headers["OCI-Filters-Applied"] = "artifactType"
        last = request.query.get("last")
        if last is not None:
            listed = [d for d in listed if d["digest"] > last]
        n = self.page_size
        try:
            n = max(1, min(n, int(request.query.get("n", n))))
        except ValueError:
            return _error(400, "PAGINATION_NUMBER_INVALID", "n is not a number")
        page = listed[:n]
        if len(listed) > n:
            query = [("n", str(n)), ("last", page[-1]["digest"])]
            query += [("artifactType", t) for t in artifact_types]
            next_url = f"/v2/{name}/referrers/{digest}?{urllib.parse.urlencode(query)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page}
        return web.Response(status=200, body=json.dumps(doc).encode(), headers=headers)


# --------------------------------------------------------------------------------------------
# A client of the API, for tests


@dataclass(frozen=True)
class ReferrersPage:
    url: str  # what was asked
    headers: http.client.HTTPMessage
    manifests: list[dict[str, Any]]

    @property
    def next(self) -> str | None:
        """The next page's URL (absolute), from the ``Link`` header."""
        link = self.headers.get("Link")
        m = _NEXT.search(link) if link else None
        return urllib.parse.urljoin(self.url, m.group(1)) if m else None


def get_referrers(
    url: str,
    repository: str,
    digest: str,
    *,
    artifact_type: str | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    max_pages: int = 100,
) -> list[ReferrersPage]:
    """Every page of ``GET /v2/<repository>/referrers/<digest>``, following ``Link``.

    Raises :class:`urllib.error.HTTPError` on an error status.
    """
    query = f"?{urllib.parse.urlencode({'artifactType': artifact_type})}" if artifact_type else ""
    next_url: str | None = f"{url.rstrip('/')}/v2/{repository}/referrers/{digest}{query}"
    pages: list[ReferrersPage] = []
    while next_url is not None:
        if len(pages) >= max_pages:
            raise RuntimeError(f"more than {max_pages} pages of referrers: a loop?")
        req = urllib.request.Request(next_url, headers=dict(headers or {}))
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            doc = json.loads(resp.read())
            page = ReferrersPage(next_url, resp.headers, list(doc["manifests"]))
        pages.append(page)
        next_url = page.next
    return pages
