"""What travels with a backup (signatures, attestations, SBOMs), as an operator sees it: on
the ImageBackup record and in the metric, in `image-backup copy`'s report, and back in a
registry after `image-backup restore`.

Real registries (Distribution 2.8, which has no referrers API: OCI 1.1 referrers go by their
fallback tag index, as signing tools push them there), the fault proxy in front of a source
that fails, the fake API server for the records, skopeo to check what the registries hold.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import deadline, make_config, plain
from tests.support import artifacts, images, skopeo
from tests.support.artifacts import SIMPLESIGNING, ArtifactManifest, fallback_tag
from tests.support.fakekube import IMAGE_BACKUPS, FakeKube
from tests.support.faultproxy import FaultProxyFactory, status
from tests.support.registries import Registry, RegistryFactory
from tests.test_restore import OLD, back_up, document, restore, write
from webhook.cluster import Coordination
from webhook.config import Config
from webhook.engine import open_engine
from webhook.kube.client import api_client
from webhook.kube.records import BackupRecords, record_name
from webhook.metrics import Metrics
from webhook.reference import parse
from webhook.registry.client import anchor_tag
from webhook.registry.copy import REFERRERS_RETRY, CopyEngine, CopyResult

NS = "image-backup"
SPDX = "application/spdx+json"
CLI = [sys.executable, "-m", "webhook"]
BLOB_UNKNOWN = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}'


@dataclass(frozen=True)
class Signed:
    """An image at a source, signed in cosign's scheme (its `.sig` tag) and with an SBOM
    attached as an OCI 1.1 referrer by the fallback tag."""

    image: images.Image
    key: ec.EllipticCurvePrivateKey
    signature: ArtifactManifest
    sbom: ArtifactManifest

    @property
    def digest(self) -> str:
        return self.image.digest

    @property
    def signature_tag(self) -> str:
        assert self.signature.tag is not None
        return self.signature.tag

    @property
    def sbom_layer(self) -> str:
        return self.sbom.layers[0].digest


def signed_image(
    registry: Registry, repository: str, tag: str, image_cache: str, seed: int
) -> Signed:
    image = images.make_image(image_cache, [4_000], seed=seed, fmt="oci")
    images.push(registry.backdoor_url, repository, tag, image)
    key = artifacts.generate_key()
    signature = artifacts.cosign_signature(key, image.digest, f"{registry.host}/{repository}")
    artifacts.push_artifact(registry.backdoor_url, repository, signature.tag, signature)
    document = artifacts.spdx_document(image.digest)
    sbom = artifacts.oci_referrer(image.descriptor(), SPDX, document, SPDX)
    artifacts.attach_by_fallback_tag(registry.backdoor_url, repository, sbom)
    return Signed(image, key, signature, sbom)


def assert_holds_both(backup: Registry, repository: str, signed: Signed) -> None:
    """The backup holds the signature at its tag and the SBOM, as skopeo reads them."""
    got = skopeo.inspect_raw_digest(backup, f"{repository}:{signed.signature_tag}")
    assert got == signed.signature.digest
    got = skopeo.inspect_raw_digest(backup, f"{repository}@{signed.sbom.digest}")
    assert got == signed.sbom.digest


def signature_entry(signed: Signed) -> dict[str, str]:
    """The signature as spec.referrers lists it."""
    return {
        "subject": signed.digest,
        "digest": signed.signature.digest,
        "artifactType": SIMPLESIGNING,
        "tag": signed.signature_tag,
    }


def sbom_entry(signed: Signed) -> dict[str, str]:
    return {"subject": signed.digest, "digest": signed.sbom.digest, "artifactType": SPDX}


def by_digest(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """In the order spec.referrers keeps (subject, then digest)."""
    return sorted(entries, key=lambda entry: (entry["subject"], entry["digest"]))


@asynccontextmanager
async def replica(
    config: Config, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[tuple[CopyEngine, Metrics]]:
    """A webhook replica as `serve` assembles one: its copies coordinated through the
    ImageBackup records, and what each carrying of referrers did counted and recorded."""
    metrics = Metrics()
    with api_client() as api:
        records = BackupRecords(api, NS, "replica-a")
        coordination = Coordination(records, metrics)
        try:
            async with open_engine(
                config, coordinator=coordination, observer=coordination, clock=clock
            ) as engine:
                yield engine, metrics
        finally:
            await records.close()


def record_of(kube: FakeKube, made: CopyResult) -> dict[str, Any]:
    name = record_name(str(made.backup_repository), made.digest)
    record: dict[str, Any] = kube.store.get(IMAGE_BACKUPS, NS, name)
    return record


def referrers_counted(metrics: Metrics) -> dict[str, float]:
    """image_backup_referrers_total by result, as a scrape of /metrics reads it."""
    text = metrics.render()[0].decode()
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "image_backup_referrers_total"
    }


# --- the record and the metric -------------------------------------------------------------


async def test_a_new_signed_image_lists_its_referrers_on_its_record_and_counts_them(
    fake_kube: FakeKube,
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
) -> None:
    """A new backup carries the `.sig` and the fallback-tag referrer before it is answered;
    its record lists both (the cosign one by its tag), lists no failure, and the metric
    counts two carried."""
    signed = signed_image(plain_registry, unique_repo, "v1", image_cache, seed=9401)
    config = make_config(
        basic_registry, sources=[plain(plain_registry)], docker_config=basic_registry.docker_config
    )

    async with replica(config) as (engine, metrics):
        made = await engine.backup(
            parse(f"{plain_registry.host}/{unique_repo}:v1"), deadline=deadline()
        )

    record = record_of(fake_kube, made)
    assert record["status"]["phase"] == "Ready"
    assert record["spec"]["referrers"] == by_digest([signature_entry(signed), sbom_entry(signed)])
    # No failure: none listed (a record whose carryings never failed may not have the key).
    assert record["status"].get("referrerFailures", []) == []
    assert referrers_counted(metrics) == {"carried": 2.0}
    # And the backup holds what the record says, as skopeo reads it.
    repository = made.backup.repository
    assert_holds_both(basic_registry, repository, signed)


async def test_a_referrer_that_fails_is_recorded_then_carried_when_due_again(
    fake_kube: FakeKube,
    fault_proxy: FaultProxyFactory,
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
) -> None:
    """A referrer whose blob the source will not serve does not fail the image's backup:
    the record names it and why, the metric counts it failed. It is not tried again before
    REFERRERS_RETRY; once due (and the source well) it is carried, the failure cleared,
    and spec.referrers still lists every artifact the backup holds, even one the source
    has dropped meanwhile."""
    source = fault_proxy(plain_registry)
    signed = signed_image(plain_registry, unique_repo, "v1", image_cache, seed=9402)
    blob_path = f"/v2/{unique_repo}/blobs/{signed.sbom_layer}"
    source.add(status(404, {"Content-Type": "application/json"}, BLOB_UNKNOWN, path=blob_path))
    config = make_config(
        basic_registry,
        sources=[plain(source)],
        docker_config=basic_registry.docker_config,
        tagCacheSeconds=0,  # every copy asks the registries: only the referrers wait
    )
    now = [time.monotonic()]
    reference = parse(f"{source.host}/{unique_repo}:v1")

    async with replica(config, clock=lambda: now[0]) as (engine, metrics):
        made = await engine.backup(reference, deadline=deadline())
        first = record_of(fake_kube, made)
        counted_first = referrers_counted(metrics)

        source.clear_rules()
        # The source drops its signature: the backup keeps it, and so does the record.
        assert images.delete_manifest(
            plain_registry.backdoor_url, unique_repo, signed.signature.digest
        )
        now[0] += REFERRERS_RETRY / 2
        early = await engine.backup(reference, deadline=deadline())
        counted_early = referrers_counted(metrics)

        now[0] += REFERRERS_RETRY
        due = await engine.backup(reference, deadline=deadline())
        last = record_of(fake_kube, due)
        counted_last = referrers_counted(metrics)

    # The image's backup stands, and its record says what could not be carried, in words.
    repository = made.backup.repository
    assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:v1") == signed.digest
    assert first["status"]["phase"] == "Ready"
    assert first["spec"]["referrers"] == [signature_entry(signed)]
    (failure,) = first["status"]["referrerFailures"]
    assert failure["subject"] == signed.digest
    assert failure["artifact"] == signed.sbom.digest
    assert failure["message"].startswith(
        f"reading blob {signed.sbom_layer} from the source registry {source.host}: not found"
    )
    assert counted_first == {"carried": 1.0, "failed": 1.0}
    # Not due yet: nothing carried, nothing counted.
    assert source.requests(path=blob_path)  # (the rule did fire)
    assert early.referrers is None and counted_early == counted_first
    # Due: carried, the failure cleared, every entry kept.
    assert due.referrers is not None
    assert [(a.digest, a.outcome.value) for a in due.referrers.artifacts] == [
        (signed.sbom.digest, "carried")
    ]
    assert last["spec"]["referrers"] == by_digest([signature_entry(signed), sbom_entry(signed)])
    assert last["status"]["referrerFailures"] == []
    assert counted_last == {"carried": 2.0, "failed": 1.0}
    assert (
        skopeo.inspect_raw_digest(basic_registry, f"{repository}@{signed.sbom.digest}")
        == signed.sbom.digest
    )
    listed = artifacts.listed_by_fallback_tag(
        basic_registry.backdoor_url, repository, signed.digest
    )
    assert listed == [signed.sbom.digest]


async def test_a_failure_to_list_referrers_is_cleared_once_listing_works(
    fake_kube: FakeKube,
    fault_proxy: FaultProxyFactory,
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
) -> None:
    """Most images have no referrers. One whose source's referrers API failed (503) gets
    the failure on its record; the next carrying, due REFERRERS_RETRY later, finds that it
    has none, and status.referrerFailures says so: []."""
    source = fault_proxy(plain_registry)
    image = images.make_image(image_cache, [4_000], seed=9406, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    source.add(status(503, body=b"down for maintenance", path=f"/v2/{unique_repo}/referrers/"))
    config = make_config(
        basic_registry, sources=[plain(source)], docker_config=basic_registry.docker_config
    )
    now = [time.monotonic()]
    reference = parse(f"{source.host}/{unique_repo}:v1")

    async with replica(config, clock=lambda: now[0]) as (engine, _):
        made = await engine.backup(reference, deadline=deadline())
        (failure,) = record_of(fake_kube, made)["status"]["referrerFailures"]
        assert failure["artifact"] == f"referrers of {image.digest}"
        assert failure["message"].startswith("listing its referrers: ")

        source.clear_rules()
        now[0] += REFERRERS_RETRY + 1
        due = await engine.backup(reference, deadline=deadline())

    assert due.referrers is not None and due.referrers.artifacts == ()  # carried: nothing
    assert record_of(fake_kube, due)["status"]["referrerFailures"] == []


# --- image-backup copy ---------------------------------------------------------------------


def cli_config(tmp_path: Path, source: Registry, backup: Registry, prefix: str, **copy: Any) -> str:
    path = tmp_path / f"config-{prefix}.yaml"
    document: dict[str, Any] = {
        "backupRegistry": {"host": backup.host, "prefix": prefix, "caFile": backup.ca_file},
        "registries": [{"host": source.host, "insecure": True}],
        "credentials": {"dockerConfig": backup.docker_config},
    }
    if copy:
        document["copy"] = copy
    path.write_text(yaml.safe_dump(document))
    return str(path)


def copy(image: str, config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "copy", image, "--config", config],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def backup_of(backup: Registry, prefix: str, source: Registry, repository: str) -> str:
    """The backup repository of `source/repository` (pathStyle nested)."""
    return f"{prefix}/{source.host.replace(':', '_')}/{repository}"


def test_copy_reports_each_artifact_carried_then_present(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """stdout stays the one backup reference scripts read; stderr has one line per artifact,
    naming it by tag or digest, with its type and what it refers to: `carried` the first
    time, `present` when the backup held it already."""
    signed = signed_image(plain_registry, unique_repo, "v1", image_cache, seed=9403)
    prefix = f"c{secrets.token_hex(4)}"
    config = cli_config(tmp_path, plain_registry, basic_registry, prefix)
    image = f"{plain_registry.host}/{unique_repo}:v1"

    first = copy(image, config)
    again = copy(image, config)

    repository = backup_of(basic_registry, prefix, plain_registry, unique_repo)
    pinned = f"{basic_registry.host}/{repository}:v1@{signed.digest}\n"
    for done in (first, again):
        assert done.returncode == 0, done.stderr
        assert done.stdout == pinned
    lines = {
        f"{signed.signature_tag} ({SIMPLESIGNING}), refers to {signed.digest}",
        f"{signed.sbom.digest} ({SPDX}), refers to {signed.digest}",
    }
    assert sorted(first.stderr.splitlines()) == sorted(f"carried: {line}" for line in lines)
    assert sorted(again.stderr.splitlines()) == sorted(f"present: {line}" for line in lines)
    assert_holds_both(basic_registry, repository, signed)


def test_copy_with_referrers_off_carries_nothing(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """`copy: {referrers: false}`: the image alone, no artifact line, no artifact or
    referrers index in the backup repository."""
    signed = signed_image(plain_registry, unique_repo, "v1", image_cache, seed=9404)
    prefix = f"n{secrets.token_hex(4)}"
    config = cli_config(tmp_path, plain_registry, basic_registry, prefix, referrers=False)

    done = copy(f"{plain_registry.host}/{unique_repo}:v1", config)

    repository = backup_of(basic_registry, prefix, plain_registry, unique_repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{basic_registry.host}/{repository}:v1@{signed.digest}\n"
    assert done.stderr == ""
    assert images.tags(basic_registry.backdoor_url, repository) == sorted(
        ["v1", anchor_tag(signed.digest)]
    )
    for digest in (signed.signature.digest, signed.sbom.digest):
        assert not images.manifest_exists(basic_registry.backdoor_url, repository, digest)


# --- image-backup restore ------------------------------------------------------------------


async def test_a_restore_from_the_backup_registry_brings_the_referrers_and_no_extra_images(
    registry_factory: RegistryFactory,
    basic_registry: Registry,
    image_cache: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backup repository holds the image, its `.sig` tag and its referrers index (tag
    `sha256-<hex>`); a restore from the backup registry alone takes the image only (one
    line, its tag), and the signature and the referrer arrive beside it, digest for digest,
    the signature still verifying."""
    monkeypatch.delenv("KUBECONFIG", raising=False)  # a new cluster: no records anywhere
    lost, empty = registry_factory(), registry_factory()
    prefix = f"r{secrets.token_hex(4)}"
    repository = "team/app"
    signed = signed_image(lost, repository, "v1", image_cache, seed=9405)
    (pinned,) = await back_up(
        document(basic_registry, prefix, {OLD: lost}), f"{OLD}/{repository}:v1", records=False
    )
    backup_repository = parse(pinned).repository
    assert set(images.tags(basic_registry.backdoor_url, backup_repository)) == {
        "v1",
        anchor_tag(signed.digest),
        signed.signature_tag,
        fallback_tag(signed.digest),
    }

    restore_doc = document(basic_registry, prefix, {})
    restore_doc["registries"] = [{"host": empty.host, "insecure": True}]
    done = restore(
        write(tmp_path, restore_doc), "--from-backup-registry", "--all", "--to-registry", empty.host
    )

    assert done.returncode == 0, done.stdout + done.stderr
    mine = [line for line in done.stdout.splitlines() if f"/{prefix}/" in line]
    assert mine == [
        f"copied: {basic_registry.host}/{backup_repository}@{signed.digest}"
        f" -> {empty.host}/{repository}@{signed.digest} (tags v1)"
    ]
    assert "restored 1 images into 1 repositories: 1 copied" in done.stdout
    assert skopeo.inspect_raw_digest(empty, f"{repository}:v1") == signed.digest
    assert (
        skopeo.inspect_raw_digest(empty, f"{repository}:{signed.signature_tag}")
        == signed.signature.digest
    )
    assert skopeo.inspect_raw_digest(empty, f"{repository}@{signed.sbom.digest}") == (
        signed.sbom.digest
    )
    listed = artifacts.listed_by_fallback_tag(empty.backdoor_url, repository, signed.digest)
    assert listed == [signed.sbom.digest]
    manifest, (payload,) = artifacts.fetch_artifact(
        empty.backdoor_url, repository, signed.signature_tag
    )
    artifacts.verify_cosign_signature(signed.key.public_key(), manifest, payload, signed.digest)
