"""The container image, built from the Dockerfile with podman and run the way
manifests/base/deployment.yaml runs it: the image's own non-root user, a read-only root
filesystem, every capability dropped, the configuration mounted read-only, and
`image-backup serve` answering /healthz over TLS.

No base image can be pulled on these machines, so the base is Debian bookworm made with
debootstrap and imported; the Dockerfile takes it as its BASE build argument. Building takes
a minute or two, so these tests are marked `container`: `make container-test` (and .ci/run)
runs them, `make test` skips them. They need root, podman, runc and debootstrap. Podman keeps
its images, containers and configuration in a directory of the test's own.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.registries import free_port
from tests.support.tls import generate_tls

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/ibw-test-base:bookworm"
IMAGE = "localhost/image-backup-webhook:test"
# Debian's directory for a machine's own CAs. Where outgoing TLS is re-signed by a local CA,
# the build's pip needs them to reach the package index.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
NEEDS_KUBERNETES = "--self-signed"  # keeps its certificate in a Secret; the test mounts one


def run(argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure shows the end of its output."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv[:6])}… exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


@dataclass(frozen=True)
class Podman:
    """podman with its storage and configuration under `state`, run the way it works on
    these machines (runc; crun fails on their hybrid cgroups)."""

    state: Path

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [
                "podman",
                *("--tmpdir", str(self.state / "tmp")),
                *("--runtime", "runc", "--cgroup-manager", "cgroupfs"),
                *("--events-backend", "file"),
                *args,
            ],
            timeout=timeout,
            check=check,
        )


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    state = tmp_path_factory.mktemp("podman")
    for name in ("containers.conf", "registries.conf"):
        (state / name).touch()
    (state / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{state}/storage"\nrunroot = "{state}/run"\n'
    )
    saved = dict(os.environ)
    os.environ.update(
        CONTAINERS_CONF=str(state / "containers.conf"),
        CONTAINERS_REGISTRIES_CONF=str(state / "registries.conf"),
        CONTAINERS_STORAGE_CONF=str(state / "storage.conf"),
    )
    podman = Podman(state)
    try:
        yield podman
    finally:
        podman("rm", "--all", "--force", check=False)
        podman("rmi", "--all", "--force", check=False)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(state)


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    """The image, built from the Dockerfile on a Debian base made here."""
    base = podman.state / "base"
    run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(base),
        ],
        timeout=900,
    )
    for ca in LOCAL_CA_DIR.glob("*.crt"):
        shutil.copy(ca, base / "usr/local/share/ca-certificates" / ca.name)
    run(["chroot", str(base), "update-ca-certificates"], timeout=120)
    run(["tar", "-C", str(base), "-cf", str(podman.state / "base.tar"), "."], timeout=300)
    shutil.rmtree(base)
    podman("import", str(podman.state / "base.tar"), BASE_IMAGE, timeout=300)
    (podman.state / "base.tar").unlink()
    # --layers=false: podman 4.3 fails a cached rebuild of RUN --mount=type=bind,from=...
    podman(
        *("build", "--layers=false", "--network", "host"),
        *("--build-arg", f"BASE={BASE_IMAGE}", "--tag", IMAGE, str(ROOT)),
        timeout=1200,
    )
    return IMAGE


def deployment_container() -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec and the webhook container of the base Deployment."""
    deployment: Any = yaml.safe_load((ROOT / "manifests/base/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def security_flags(container: dict[str, Any]) -> list[str]:
    """podman's words for the container's securityContext."""
    context = container["securityContext"]
    flags = []
    if context.get("readOnlyRootFilesystem"):
        # podman would otherwise mount writable tmpfs on /run, /var/tmp and /tmp
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if context.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={c.lower()}" for c in context.get("capabilities", {}).get("drop", [])]
    return flags


@dataclass(frozen=True)
class Running:
    name: str
    url: str
    ca_file: str


@pytest.fixture(scope="module")
def running(podman: Podman, image: str) -> Iterator[Running]:
    """The image running as the Deployment runs it, on a free loopback port."""
    pod, container = deployment_container()
    work = podman.state / "run-webhook"
    port = free_port()
    uid = pod["securityContext"]["runAsUser"]
    tls = generate_tls(str(work / "ca"))
    # The volumes of the Deployment, each a directory here.
    volumes = {name: work / name for name in ("config", "tls", "tmp")}
    for directory in volumes.values():
        directory.mkdir(parents=True)
    config: Any = yaml.safe_load((ROOT / "manifests/base/config.yaml").read_text())
    config["server"]["port"] = port  # the host's network: the port must be free here
    (volumes["config"] / "config.yaml").write_text(yaml.safe_dump(config))
    (volumes["config"] / "registry").mkdir()
    (volumes["config"] / "registry/.dockerconfigjson").write_text('{"auths": {}}')
    # What the server would write there itself with --self-signed, owned by its user.
    shutil.copy(tls.cert_file, volumes["tls"] / "tls.crt")
    shutil.copy(tls.key_file, volumes["tls"] / "tls.key")
    for path in (volumes["tls"], *volumes["tls"].iterdir(), volumes["tmp"]):
        os.chown(path, uid, uid)
    mounts = []
    for mount in container["volumeMounts"]:
        mode = "ro" if mount.get("readOnly") else "rw"
        mounts += ["--volume", f"{volumes[mount['name']]}:{mount['mountPath']}:{mode}"]
    name = f"ibw-test-{port}"
    podman(
        *("run", "--detach", "--name", name, "--network", "host"),
        *("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"),
        *security_flags(container),
        *mounts,
        *("--env", "POD_NAMESPACE=image-backup", "--env", f"POD_NAME={name}"),
        image,
        *[arg for arg in container["args"] if arg != NEEDS_KUBERNETES],
    )
    try:
        yield Running(name, f"https://127.0.0.1:{port}", tls.ca_file)
    finally:
        podman("rm", "--force", name, check=False)


def get(running: Running, path: str) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=running.ca_file)
    with urllib.request.urlopen(running.url + path, context=context, timeout=5) as answer:
        return int(answer.status), answer.read()


def wait_healthy(podman: Podman, running: Running) -> tuple[int, bytes]:
    deadline = time.monotonic() + 60
    while True:
        try:
            return get(running, "/healthz")
        except OSError:
            state = podman("inspect", "--format", "{{.State.Running}}", running.name).stdout
            if state.strip() != "true" or time.monotonic() > deadline:
                logs = podman("logs", running.name, check=False)
                pytest.fail(f"the container did not answer:\n{logs.stdout}{logs.stderr}")
            time.sleep(0.5)


def test_image_user_is_the_deployments_non_root_user(podman: Podman, image: str) -> None:
    pod, _ = deployment_container()
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    uid, _, gid = user.partition(":")
    # numeric, so runAsNonRoot can check it; OpenShift's overlay drops runAsUser, so the
    # image's own user is what runs there
    assert uid.isdigit() and int(uid) != 0, user
    assert int(uid) == pod["securityContext"]["runAsUser"]
    assert int(gid) == pod["securityContext"]["runAsGroup"]


def test_serves_healthz_over_tls_as_non_root_on_a_read_only_root(
    podman: Podman, running: Running
) -> None:
    assert wait_healthy(podman, running) == (200, b"ok\n")
    pid = podman("inspect", "--format", "{{.State.Pid}}", running.name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    (uids,) = [line.split()[1:] for line in status if line.startswith("Uid:")]
    pod, _ = deployment_container()
    assert set(uids) == {str(pod["securityContext"]["runAsUser"])}  # real, effective, saved
    # The root filesystem is read-only for the server's user, and was for the server itself.
    probe = podman("exec", running.name, "python3", "-c", "open('/probe', 'w')", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    logs = podman("logs", running.name)
    lines = logs.stdout + logs.stderr
    assert '"event":"listening"' in lines
    assert '"level":"error"' not in lines
