"""Thin wrappers around ``skopeo`` (1.9.3) as an independent client of the test registries.

* Credentials only ever travel in the registry's docker ``config.json`` (``--authfile``),
  never in argv.
* TLS registries are trusted through ``--cert-dir`` holding just the test CA as ``ca.crt``;
  plain-HTTP registries use ``--tls-verify=false``.
* Every call runs in a private state directory (a fresh one unless the caller names one):
  ``HOME``/``XDG_*`` point into it and ``_CONTAINERS_ROOTLESS_UID`` is set, so
  containers/image puts its blob-info cache (``blob-info-cache-v1.boltdb``, which for root
  would otherwise live in the machine-wide ``/var/lib/containers/cache``) there, and reads
  an empty ``registries.conf`` and ``registries.d`` of its own instead of
  ``/etc/containers``: the cache is cold for each call, and neither a machine's containers
  configuration nor a cache some other skopeo left behind changes what a test sees.
* A private permissive ``policy.json`` is passed with ``--policy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "SKOPEO_BINARY",
    "CopyResult",
    "SkopeoEndpoint",
    "SkopeoError",
    "blob_info_cache",
    "copy",
    "inspect_raw",
    "inspect_raw_digest",
    "run_skopeo",
]

SKOPEO_BINARY = os.environ.get("IBW_TEST_SKOPEO_BINARY", "skopeo")
_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'


class SkopeoEndpoint(Protocol):
    """What skopeo needs to know about a registry (a :class:`Registry` fits)."""

    @property
    def host(self) -> str: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def docker_config(self) -> str: ...


class SkopeoError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo failed ({returncode}): {' '.join(argv)}\n{stderr[-4000:]}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class CopyResult:
    seconds: float  # wall-clock time of the skopeo process
    digest: str | None  # digest of the pushed top-level manifest (from --digestfile)
    stderr: str


def _cert_dir(ca_file: str) -> str:
    """A directory next to the CA holding only ``ca.crt``.

    (skopeo would treat the server's ``*.key`` without a ``*.cert`` beside it as an error.)
    """
    d = os.path.join(os.path.dirname(os.path.abspath(ca_file)), "skopeo-cert-dir")
    target = os.path.join(d, "ca.crt")
    with open(ca_file, "rb") as f:
        ca = f.read()
    if not os.path.exists(target):
        os.makedirs(d, exist_ok=True)
        tmp = f"{target}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(ca)
        os.replace(tmp, target)
    return d


def _tls_flags(prefix: str, endpoint: SkopeoEndpoint) -> list[str]:
    if endpoint.ca_file:
        return [f"--{prefix}cert-dir", _cert_dir(endpoint.ca_file), f"--{prefix}tls-verify=true"]
    return [f"--{prefix}tls-verify=false"]


def _ref(endpoint: SkopeoEndpoint, reference: str) -> str:
    if reference.startswith("docker://"):
        reference = reference[len("docker://") :]
    if not reference.startswith(endpoint.host + "/"):
        reference = f"{endpoint.host}/{reference}"
    return f"docker://{reference}"


def blob_info_cache(home: str) -> str:
    """Where skopeo run with state directory ``home`` keeps its blob-info cache."""
    return os.path.join(home, "data", "containers", "cache", "blob-info-cache-v1.boltdb")


def _private_env(home: str) -> dict[str, str]:
    """The environment of a skopeo whose every file of state is under ``home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "REGISTRY_AUTH", "CONTAINERS_"))
    }
    env.update(
        HOME=home,
        XDG_DATA_HOME=os.path.join(home, "data"),
        XDG_CONFIG_HOME=os.path.join(home, ".config"),
        XDG_CACHE_HOME=os.path.join(home, "cache"),
        XDG_RUNTIME_DIR=os.path.join(home, "run"),
        # containers/image puts the blob-info cache under XDG_DATA_HOME only for non-root
        _CONTAINERS_ROOTLESS_UID=str(os.geteuid() or 65534),
        TMPDIR=os.path.join(home, "tmp"),
    )
    for d in ("data", ".config/containers", "cache", "run", "tmp", "registries.d"):
        os.makedirs(os.path.join(home, d), mode=0o700, exist_ok=True)
    # A "rootless" skopeo reads $HOME/.config/containers/registries.conf, if there is one,
    # instead of /etc/containers/registries.conf.
    with open(os.path.join(home, ".config", "containers", "registries.conf"), "w"):
        pass
    with open(os.path.join(home, "policy.json"), "w") as f:
        f.write(_POLICY)
    return env


def run_skopeo(
    args: Sequence[str], *, timeout: float = 600, check: bool = True, home: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``skopeo --policy <permissive> ARGS`` with its state in ``home`` (default: a fresh
    directory, removed afterwards, so caches are cold)."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="ibw-skopeo-"))
        env = _private_env(home)
        argv = [
            SKOPEO_BINARY,
            "--policy",
            os.path.join(home, "policy.json"),
            "--registries.d",
            os.path.join(home, "registries.d"),
            "--tmpdir",
            env["TMPDIR"],
            *args,
        ]
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise SkopeoError(argv, proc.returncode, proc.stderr.decode(errors="replace"))
        return proc


def inspect_raw(registry: SkopeoEndpoint, reference: str) -> bytes:
    """``skopeo inspect --raw docker://HOST/REFERENCE``: the manifest bytes as served."""
    proc = run_skopeo(
        [
            "inspect",
            "--raw",
            "--authfile",
            registry.docker_config,
            *_tls_flags("", registry),
            _ref(registry, reference),
        ],
        timeout=120,
    )
    return proc.stdout


def inspect_raw_digest(registry: SkopeoEndpoint, reference: str) -> str:
    """``"sha256:" + sha256(skopeo inspect --raw ...)``. ``reference`` is ``repo:tag`` or
    ``repo@digest`` (the registry host is prepended unless already there)."""
    return "sha256:" + hashlib.sha256(inspect_raw(registry, reference)).hexdigest()


def copy(
    src_registry: SkopeoEndpoint,
    src_ref: str,
    dst_registry: SkopeoEndpoint,
    dst_ref: str,
    *,
    all_platforms: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 1800,
    home: str | None = None,
) -> CopyResult:
    """``skopeo copy --preserve-digests`` between two registries with a cold blob-info cache.

    ``all_platforms`` adds ``--all`` (copy every image of an index); ``home`` is skopeo's state
    directory (see :func:`run_skopeo`). Returns the wall time and the pushed digest.
    """
    with tempfile.TemporaryDirectory(prefix="ibw-skopeo-digest-") as d:
        digestfile = os.path.join(d, "digest")
        args = [
            "copy",
            "--quiet",
            "--preserve-digests",
            "--digestfile",
            digestfile,
            "--src-authfile",
            src_registry.docker_config,
            "--dest-authfile",
            dst_registry.docker_config,
            *_tls_flags("src-", src_registry),
            *_tls_flags("dest-", dst_registry),
        ]
        if all_platforms:
            args.append("--all")
        args += [*extra_args, _ref(src_registry, src_ref), _ref(dst_registry, dst_ref)]
        start = time.perf_counter()
        proc = run_skopeo(args, timeout=timeout, home=home)
        seconds = time.perf_counter() - start
        digest = None
        if os.path.exists(digestfile):
            with open(digestfile) as f:
                digest = f.read().strip() or None
        return CopyResult(seconds, digest, proc.stderr.decode(errors="replace"))
