"""The registry operations the copy engine needs, over the OCI distribution API.

Each operation's errors say what it was doing in words, and on which side: a repository
asked with the push scope is a backup being written, any other one a source being read.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .credentials import Credential, DockerConfig
from .errors import NotFound, Operation, RegistryError, Side, TransientError
from .media import ACCEPT, OCI_INDEX, Descriptor, Manifest, parse_manifest, verify_digest
from .transport import Transport, describe

PULL = "pull"
PUSH = "pull,push"
CATALOG = "registry:catalog:*"
LIST_PAGE = 1000  # names asked per page of a catalog or tag list (registries may send fewer)
LIST_PAGES = 100  # pages of referrers of one digest, at most: a registry that loops ends
NO_API = (400, 404, 405, 406)  # what registries without the referrers API answer it
# Every backup's digest is tagged so registry clean-ups of untagged manifests spare it.
# `backup-sha256-<hex>`: beside OCI 1.1's referrers fallback tag (`sha256-<hex>`, an index of
# what refers to the digest, which signing tools push) and cosign's `sha256-<hex>.sig`,
# `.att` and `.sbom`, colliding with none. Backups made before were anchored by
# `sha256-<hex>` itself (OLD_ANCHOR), and are still recognized by it.
ANCHOR_PREFIX = "backup-"
ANCHOR_TAG = re.compile(r"(backup-)?sha256-([0-9a-f]{64})")  # group 1: not the old anchor
# cosign's tags of a digest: a signature, attestations, an SBOM. They travel with the image.
COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(?:sig|att|sbom)")


@dataclass(frozen=True, slots=True)
class Repository:
    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"

    def scope(self, actions: str) -> str:
        return f"repository:{self.path}:{actions}"


def anchor_tag(digest: str) -> str:
    """A tag per digest, so registry clean-ups of untagged manifests spare pinned backups."""
    return ANCHOR_PREFIX + old_anchor_tag(digest)


def old_anchor_tag(digest: str) -> str:
    """The anchor of backups made before `anchor_tag` moved off OCI's referrers tag."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"


def reading_blob(repo: Repository, digest: str) -> Operation:
    """Reading a blob from a source: where a failure of its bytes is reported."""
    return _on(repo, f"reading blob {digest}", backup=False)


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _on(repo: Repository, doing: str, *, backup: bool) -> Operation:
    if backup:
        return Operation(doing, repo.host, Side.BACKUP, repo.path)
    return Operation(doing, repo.host, Side.SOURCE)


def _manifest(repo: Repository, doing: str, reference: str, *, backup: bool) -> Operation:
    """An operation on a manifest, named as a person would: an anchor tag (which nobody
    asked for by that name) as the backup tag of its digest."""
    anchored = ANCHOR_TAG.fullmatch(reference)
    if anchored and anchored[1]:  # (an old anchor's tag is also OCI's referrers tag)
        what = f"the backup tag for sha256:{anchored[2]}"
    else:
        what = f"{'manifest' if _is_digest(reference) else 'tag'} {reference}"
    return _on(repo, f"{doing} {what}", backup=backup)


class RegistryClient:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def credential(
        self, repo: Repository, keyring: DockerConfig | None = None
    ) -> Credential | None:
        """What reading `repo` would present, given `keyring`."""
        return self._transport.credential(repo.host, repo.path, keyring)

    async def answers(self, host: str, *, deadline: float) -> bool:
        """Whether the registry's API answers at all (for readiness): any HTTP reply counts."""
        try:
            response = await self._transport.request(
                host,
                "GET",
                "/v2/",
                repository="",
                scopes=[],
                deadline=deadline,
                operation=Operation("checking that it answers", host),
                ok=range(200, 500),
                retry=False,
            )
        except RegistryError:
            return False
        response.release()
        return True

    async def repositories(self, host: str, *, deadline: float) -> list[str]:
        """Every repository the registry lists (`/v2/_catalog`), a page at a time."""
        operation = Operation("listing the repositories", host)
        return await self._names(
            host, "/v2/_catalog", "repositories", "", [CATALOG], operation, deadline
        )

    async def tags(
        self, repo: Repository, *, deadline: float, keyring: DockerConfig | None = None
    ) -> list[str]:
        """Every tag of `repo` (`/v2/<name>/tags/list`), a page at a time; [] if it has none."""
        operation = Operation(f"listing the tags of {repo.path}", repo.host)
        path = f"/v2/{repo.path}/tags/list"
        return await self._names(
            repo.host, path, "tags", repo.path, [repo.scope(PULL)], operation, deadline, keyring
        )

    async def referrers(
        self,
        repo: Repository,
        digest: str,
        *,
        deadline: float,
        push: bool = False,
        keyring: DockerConfig | None = None,
    ) -> list[Descriptor] | None:
        """The manifests whose subject is `digest`, by the OCI 1.1 referrers API (every page
        the `Link` header names); None where the registry has no such API: it answers 404,
        which a registry that has it never does (OCI 1.1), or, from registries older than
        the API, NO_API's other refusals of a path they do not know."""
        operation = _on(repo, f"listing the referrers of {digest}", backup=push)
        found: list[Descriptor] = []
        pages = self._pages(
            repo.host,
            f"/v2/{repo.path}/referrers/{digest}",
            repository=repo.path,
            scopes=[repo.scope(PUSH if push else PULL)],
            operation=operation,
            deadline=deadline,
            keyring=keyring,
            headers={"Accept": OCI_INDEX},
            ok=(200, *NO_API),
            most=LIST_PAGES,
        )
        async with aclosing(pages):
            async for response, raw in pages:
                if response.status in NO_API:
                    return None
                try:
                    index = parse_manifest(raw, response.headers.get("Content-Type"))
                except RegistryError as exc:
                    raise exc.during(operation) from None
                found.extend(index.children)
                if not index.children:
                    break
        return found

    async def _names(
        self,
        host: str,
        path: str,
        key: str,
        repository: str,
        scopes: list[str],
        operation: Operation,
        deadline: float,
        keyring: DockerConfig | None = None,
    ) -> list[str]:
        """A paginated list: `n` per page, the next page where the `Link` header says."""
        names: list[str] = []
        pages = self._pages(
            host,
            f"{path}?n={LIST_PAGE}",
            repository=repository,
            scopes=scopes,
            operation=operation,
            deadline=deadline,
            keyring=keyring,
        )
        async with aclosing(pages):
            async for _, raw in pages:
                try:
                    listed = json.loads(raw) if raw.strip() else None
                except ValueError:
                    raise RegistryError(
                        "the registry answered with no JSON list", operation
                    ) from None
                page = listed.get(key) if isinstance(listed, dict) else None
                if page is not None and not (
                    isinstance(page, list) and all(isinstance(name, str) for name in page)
                ):
                    raise RegistryError(f"the registry's {key} are not a list of names", operation)
                names.extend(page or ())
                if not page:
                    break
        return names

    async def _pages(
        self,
        host: str,
        path: str,
        *,
        repository: str,
        scopes: list[str],
        operation: Operation,
        deadline: float,
        keyring: DockerConfig | None,
        headers: dict[str, str] | None = None,
        ok: Collection[int] = (200,),
        most: int | None = None,
    ) -> AsyncGenerator[tuple[aiohttp.ClientResponse, bytes], None]:
        """The pages of a list, each its (released) response and body: the first at `path`,
        each next one where the one before's `Link` header says, `most` of them at most."""
        target: str | URL = path
        pages = 0
        while most is None or pages < most:
            pages += 1
            response = await self._transport.request(
                host,
                "GET",
                target,
                repository=repository,
                scopes=scopes,
                deadline=deadline,
                operation=operation,
                headers=headers,
                ok=ok,
                keyring=keyring,
            )
            try:
                async with response:
                    raw = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientError(describe(exc), operation) from None
            yield response, raw
            following = response.links.get("next")
            if not following:
                return
            target = response.url.join(URL(str(following["url"]), encoded=True))
        raise RegistryError(f"more than {most} pages", operation)

    async def head_manifest(
        self,
        repo: Repository,
        reference: str,
        *,
        deadline: float,
        push: bool = False,
        keyring: DockerConfig | None = None,
    ) -> Descriptor | None:
        """The manifest's descriptor, None if absent; digest "" if the registry did not say.

        `push`: `repo` is a backup, asked with the scope the copy needs there anyway (so
        one token serves all) and named as the backup registry in errors.
        """
        response = await self._transport.request(
            repo.host,
            "HEAD",
            f"/v2/{repo.path}/manifests/{reference}",
            repository=repo.path,
            scopes=[repo.scope(PUSH if push else PULL)],
            deadline=deadline,
            operation=_manifest(repo, "reading", reference, backup=push),
            headers={"Accept": ACCEPT},
            ok=(200, 404),
            keyring=keyring,
        )
        response.release()
        if response.status == 404:
            return None
        return Descriptor(
            response.headers.get("Content-Type", ""),
            response.headers.get("Docker-Content-Digest", ""),
            response.content_length or 0,
        )

    async def get_manifest(
        self,
        repo: Repository,
        reference: str,
        *,
        deadline: float,
        push: bool = False,
        keyring: DockerConfig | None = None,
    ) -> Manifest:
        operation = _manifest(repo, "reading", reference, backup=push)
        response = await self._transport.request(
            repo.host,
            "GET",
            f"/v2/{repo.path}/manifests/{reference}",
            repository=repo.path,
            scopes=[repo.scope(PUSH if push else PULL)],
            deadline=deadline,
            operation=operation,
            headers={"Accept": ACCEPT},
            keyring=keyring,
        )
        try:
            async with response:
                raw = await response.read()
            manifest = parse_manifest(raw, response.headers.get("Content-Type"))
            if _is_digest(reference):
                verify_digest(manifest, reference)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(describe(exc), operation) from None
        except RegistryError as exc:
            raise exc.during(operation) from None
        return manifest

    async def resolve(
        self, repo: Repository, reference: str, *, deadline: float, keyring: DockerConfig | None
    ) -> str:
        """The digest a tag (or digest) names now, read with `keyring`'s credentials: HEAD
        when the registry says the digest, else GET and hash. Asking also proves that those
        credentials may read it."""
        found = await self.head_manifest(repo, reference, deadline=deadline, keyring=keyring)
        if found is None:
            raise NotFound("not found", _manifest(repo, "reading", reference, backup=False))
        if _is_digest(reference):
            return reference
        if found.digest:
            return found.digest
        manifest = await self.get_manifest(repo, reference, deadline=deadline, keyring=keyring)
        return manifest.digest

    async def put_manifest(
        self, repo: Repository, reference: str, manifest: Manifest, *, deadline: float
    ) -> str:
        """Store the manifest's exact bytes. Returns the `OCI-Subject` the registry answered
        ("" if none): a registry with the referrers API says so when it indexed a referrer."""
        operation = _manifest(repo, "writing", reference, backup=True)
        response = await self._transport.request(
            repo.host,
            "PUT",
            f"/v2/{repo.path}/manifests/{reference}",
            repository=repo.path,
            scopes=[repo.scope(PUSH)],
            deadline=deadline,
            operation=operation,
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
            ok=(200, 201),
        )
        response.release()
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != manifest.digest:
            raise RegistryError(
                f"the registry stored it as {stored}, not {manifest.digest}", operation
            )
        return response.headers.get("OCI-Subject", "")

    async def blob_exists(self, repo: Repository, digest: str, *, deadline: float) -> bool:
        path = f"/v2/{repo.path}/blobs/{digest}"
        return await self._found(repo, "HEAD", path, f"checking for blob {digest}", deadline)

    async def has_tags(self, repo: Repository, *, deadline: float) -> bool:
        """Whether the repository exists with tags; a new one needs no per-blob existence checks."""
        path = f"/v2/{repo.path}/tags/list?n=1"
        return await self._found(repo, "GET", path, "listing the tags", deadline)

    async def _found(
        self, repo: Repository, method: str, path: str, doing: str, deadline: float
    ) -> bool:
        """200 or 404 from a target repository (asked with the push scope the copy holds)."""
        response = await self._transport.request(
            repo.host,
            method,
            path,
            repository=repo.path,
            scopes=[repo.scope(PUSH)],
            deadline=deadline,
            operation=_on(repo, doing, backup=True),
            ok=(200, 404),
        )
        response.release()
        return response.status == 200

    async def start_upload(
        self, repo: Repository, digest: str, *, deadline: float, mount_from: str | None = None
    ) -> URL | None:
        """Open an upload session for blob `digest`; with `mount_from` (a repository path
        on the same registry) try a cross-repo mount first.

        Returns None when the blob was mounted, else the upload URL. A registry
        that cannot mount answers with a fresh upload session instead, which we
        use; one that refuses the mount outright gets a plain upload.
        """
        scopes = [repo.scope(PUSH)]
        query = ""
        operation = _on(repo, f"starting the upload of blob {digest}", backup=True)
        if mount_from is not None:
            scopes.append(f"repository:{mount_from}:{PULL}")
            query = f"?mount={digest}&from={mount_from}"
        try:
            response = await self._transport.request(
                repo.host,
                "POST",
                f"/v2/{repo.path}/blobs/uploads/{query}",
                repository=repo.path,
                scopes=scopes,
                deadline=deadline,
                operation=operation,
                ok=(201, 202),
            )
        except RegistryError:
            if mount_from is None:
                raise
            return await self.start_upload(repo, digest, deadline=deadline)
        response.release()
        if response.status == 201:
            return None
        location = response.headers.get("Location")
        if not location:
            raise RegistryError("the registry opened an upload without a Location", operation)
        return response.url.join(URL(location, encoded=True))

    async def finish_upload(
        self,
        repo: Repository,
        location: URL,
        blob: Descriptor,
        body: AsyncIterator[bytes],
        *,
        deadline: float,
    ) -> None:
        """Send the whole blob in the request that completes the upload: no chunk round trips."""
        response = await self._transport.request(
            repo.host,
            "PUT",
            location.extend_query(digest=blob.digest),
            repository=repo.path,
            scopes=[repo.scope(PUSH)],
            deadline=deadline,
            operation=_on(repo, f"writing blob {blob.digest}", backup=True),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(blob.size),
            },
            data=body,
            ok=(201, 204),
            retry=False,
        )
        response.release()

    async def cancel_upload(self, repo: Repository, location: URL, *, deadline: float) -> None:
        response = await self._transport.request(
            repo.host,
            "DELETE",
            location,
            repository=repo.path,
            scopes=[repo.scope(PUSH)],
            deadline=deadline,
            operation=_on(repo, "cancelling an upload", backup=True),
            ok=range(200, 500),
            retry=False,
        )
        response.release()

    @asynccontextmanager
    async def open_blob(
        self, repo: Repository, digest: str, *, deadline: float, keyring: DockerConfig | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The blob's bytes as they arrive (redirects to object storage followed).

        A failure while they stream is the source's, and says so: when the bytes feed an
        upload, it is this error, not the upload's, that reaches the caller.
        """
        operation = reading_blob(repo, digest)
        response = await self._transport.request(
            repo.host,
            "GET",
            f"/v2/{repo.path}/blobs/{digest}",
            repository=repo.path,
            scopes=[repo.scope(PULL)],
            deadline=deadline,
            operation=operation,
            retry=False,
            keyring=keyring,
        )

        async def chunks() -> AsyncIterator[bytes]:
            try:
                # Chunks as received, not re-joined: no copies on the way through.
                async for chunk, _ in response.content.iter_chunks():
                    yield chunk
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise TransientError(describe(exc), operation) from None

        async with response:
            yield chunks()
