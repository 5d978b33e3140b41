"""`image-backup` as an operator runs it."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import yaml

from tests.support import images, skopeo
from tests.support.registries import Registry

CLI = [sys.executable, "-m", "webhook"]


def write_config(tmp_path: Path, source: Registry, backup: Registry) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "backupRegistry": {
                    "host": backup.host,
                    "prefix": "mirror",
                    "caFile": backup.ca_file,
                },
                "registries": [{"host": source.host, "insecure": True}],
                "credentials": {"dockerConfig": backup.docker_config},
            }
        )
    )
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def test_copy_prints_the_pinned_backup_and_skopeo_agrees(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = images.make_image(image_cache, [10_000, 20_000], seed=301, fmt="docker")
    images.push(plain_registry.backdoor_url, unique_repo, "2.1", image)
    config = write_config(tmp_path, plain_registry, basic_registry)

    done = run("copy", f"{plain_registry.host}/{unique_repo}:2.1", "--config", config)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar when not on a terminal
    backup = done.stdout.strip()
    host_part = plain_registry.host.replace(":", "_")
    assert backup == f"{basic_registry.host}/mirror/{host_part}/{unique_repo}:2.1@{image.digest}"
    repository = backup.split("/", 1)[1].split(":")[0]
    assert skopeo.inspect_raw_digest(basic_registry, f"{repository}:2.1") == image.digest


def test_copy_to_an_explicit_target_and_resolve(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = images.make_image(image_cache, [1_000], seed=302, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    config = write_config(tmp_path, plain_registry, basic_registry)

    copied = run(
        "copy",
        f"{plain_registry.host}/{unique_repo}:v1",
        "--to",
        f"{basic_registry.host}/elsewhere/{unique_repo}:stable",
        "--config",
        config,
    )
    resolved = run(
        "resolve", f"{basic_registry.host}/elsewhere/{unique_repo}:stable", "--config", config
    )

    assert (
        copied.stdout.strip()
        == f"{basic_registry.host}/elsewhere/{unique_repo}:stable@{image.digest}"
    )
    assert resolved.returncode == 0 and resolved.stdout.strip() == image.digest


def test_failures_exit_non_zero_with_one_line(
    plain_registry: Registry,
    basic_registry: Registry,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, plain_registry, basic_registry)
    missing = run("copy", f"{plain_registry.host}/{unique_repo}:absent", "--config", config)
    invalid = run("copy", "Upper/Case:1", "--config", config)
    bad_config = run("copy", "nginx", "--config", str(tmp_path / "absent.yaml"))

    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and f"{unique_repo}:absent: not found" in missing.stderr
    assert invalid.returncode == 2 and 'invalid image reference "Upper/Case:1"' in invalid.stderr
    assert bad_config.returncode == 2 and "cannot read config" in bad_config.stderr
    for done in (missing, invalid, bad_config):
        assert done.stdout == "" and "Traceback" not in done.stderr


def test_progress_bar_on_a_terminal(
    plain_registry: Registry,
    basic_registry: Registry,
    image_cache: str,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = images.make_image(image_cache, [2_000_000], seed=303, fmt="oci")
    images.push(plain_registry.backdoor_url, unique_repo, "v1", image)
    config = write_config(tmp_path, plain_registry, basic_registry)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    shown = b""
    try:
        process = subprocess.Popen(
            [*CLI, "copy", f"{plain_registry.host}/{unique_repo}:v1", "--config", config],
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        # Keep our end of the terminal open while reading, so nothing written is lost.
        while True:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                shown += os.read(controller, 65536)
            elif process.poll() is not None:
                break
        process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 0
    assert b"B/s" in shown  # bytes and rate
