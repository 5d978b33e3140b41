"""The registry operations the copy engine needs, over the OCI distribution API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .credentials import Credential, DockerConfig
from .errors import NotFound, RegistryError, TransientError
from .media import ACCEPT, Descriptor, Manifest, parse_manifest, verify_digest
from .transport import Transport

PULL = "pull"
PUSH = "pull,push"


@dataclass(frozen=True, slots=True)
class Repository:
    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"

    def scope(self, actions: str) -> str:
        return f"repository:{self.path}:{actions}"


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _at(repo: Repository, reference: str) -> str:
    return f"{repo}{'@' if _is_digest(reference) else ':'}{reference}"


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
                what=f"{host}: ping",
                ok=range(200, 500),
                retry=False,
            )
        except RegistryError:
            return False
        response.release()
        return True

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

        `push` asks with the scope the copy needs on a target anyway, so one token serves all.
        """
        response = await self._transport.request(
            repo.host,
            "HEAD",
            f"/v2/{repo.path}/manifests/{reference}",
            repository=repo.path,
            scopes=[repo.scope(PUSH if push else PULL)],
            deadline=deadline,
            what=_at(repo, reference),
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
        where = _at(repo, reference)
        response = await self._transport.request(
            repo.host,
            "GET",
            f"/v2/{repo.path}/manifests/{reference}",
            repository=repo.path,
            scopes=[repo.scope(PUSH if push else PULL)],
            deadline=deadline,
            what=where,
            headers={"Accept": ACCEPT},
            keyring=keyring,
        )
        async with response:
            raw = await response.read()
        manifest = parse_manifest(raw, response.headers.get("Content-Type"), where)
        if _is_digest(reference):
            verify_digest(manifest, reference, where)
        return manifest

    async def resolve(
        self, repo: Repository, reference: str, *, deadline: float, keyring: DockerConfig | None
    ) -> str:
        """The digest a tag (or digest) names now, read with `keyring`'s credentials: HEAD
        when the registry says the digest, else GET and hash. Asking also proves that those
        credentials may read it."""
        found = await self.head_manifest(repo, reference, deadline=deadline, keyring=keyring)
        if found is None:
            raise NotFound(f"{_at(repo, reference)}: not found")
        if _is_digest(reference):
            return reference
        if found.digest:
            return found.digest
        manifest = await self.get_manifest(repo, reference, deadline=deadline, keyring=keyring)
        return manifest.digest

    async def put_manifest(
        self, repo: Repository, reference: str, manifest: Manifest, *, deadline: float
    ) -> None:
        where = _at(repo, reference)
        response = await self._transport.request(
            repo.host,
            "PUT",
            f"/v2/{repo.path}/manifests/{reference}",
            repository=repo.path,
            scopes=[repo.scope(PUSH)],
            deadline=deadline,
            what=where,
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
            ok=(200, 201),
        )
        response.release()
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != manifest.digest:
            raise RegistryError(f"{where}: registry stored {stored}, expected {manifest.digest}")

    async def blob_exists(self, repo: Repository, digest: str, *, deadline: float) -> bool:
        path = f"/v2/{repo.path}/blobs/{digest}"
        return await self._found(repo, "HEAD", path, f"{repo}@{digest}", deadline)

    async def has_tags(self, repo: Repository, *, deadline: float) -> bool:
        """Whether the repository exists with tags; a new one needs no per-blob existence checks."""
        path = f"/v2/{repo.path}/tags/list?n=1"
        return await self._found(repo, "GET", path, f"{repo}: tags", deadline)

    async def _found(
        self, repo: Repository, method: str, path: str, what: str, deadline: float
    ) -> bool:
        """200 or 404 from a target repository (asked with the push scope the copy holds)."""
        response = await self._transport.request(
            repo.host,
            method,
            path,
            repository=repo.path,
            scopes=[repo.scope(PUSH)],
            deadline=deadline,
            what=what,
            ok=(200, 404),
        )
        response.release()
        return response.status == 200

    async def start_upload(
        self, repo: Repository, *, deadline: float, mount: tuple[str, str] | None = None
    ) -> URL | None:
        """Open an upload session; with `mount=(digest, from_path)` try a cross-repo mount first.

        Returns None when the blob was mounted, else the upload URL. A registry
        that cannot mount answers with a fresh upload session instead, which we
        use; one that refuses the mount outright gets a plain upload.
        """
        scopes = [repo.scope(PUSH)]
        query = ""
        if mount is not None:
            digest, from_path = mount
            scopes.append(f"repository:{from_path}:{PULL}")
            query = f"?mount={digest}&from={from_path}"
        try:
            response = await self._transport.request(
                repo.host,
                "POST",
                f"/v2/{repo.path}/blobs/uploads/{query}",
                repository=repo.path,
                scopes=scopes,
                deadline=deadline,
                what=f"{repo}: start upload",
                ok=(201, 202),
            )
        except RegistryError:
            if mount is None:
                raise
            return await self.start_upload(repo, deadline=deadline)
        response.release()
        if response.status == 201:
            return None
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{repo}: registry opened an upload without a Location")
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
            what=f"{repo}@{blob.digest}: upload",
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
            what=f"{repo}: cancel upload",
            ok=range(200, 500),
            retry=False,
        )
        response.release()

    @asynccontextmanager
    async def open_blob(
        self, repo: Repository, digest: str, *, deadline: float, keyring: DockerConfig | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The blob's bytes as they arrive (redirects to object storage followed)."""
        response = await self._transport.request(
            repo.host,
            "GET",
            f"/v2/{repo.path}/blobs/{digest}",
            repository=repo.path,
            scopes=[repo.scope(PULL)],
            deadline=deadline,
            what=f"{repo}@{digest}",
            retry=False,
            keyring=keyring,
        )
        what = f"{repo}@{digest}"

        async def chunks() -> AsyncIterator[bytes]:
            try:
                # Chunks as received, not re-joined: no copies on the way through.
                async for chunk, _ in response.content.iter_chunks():
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientError(f"{what}: connection lost while reading ({exc})") from None

        async with response:
            yield chunks()
