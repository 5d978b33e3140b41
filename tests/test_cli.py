"""`image-backup` as an operator runs it."""

from __future__ import annotations

import fcntl
import importlib
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from tests.support import images, skopeo
from tests.support.registries import Registry
from webhook import cli

CLI = [sys.executable, "-m", "webhook"]


# What `copy` has no use for.
NOT_FOR_COPY = {
    "kubernetes",
    "cryptography",
    "certs.bootstrap",
    "prometheus_client",
    "tqdm",  # no terminal in these tests
    "webhook.server",
    "webhook.tls",
    "webhook.cluster",
    "webhook.admission",
    "webhook.kube",
}


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


# Runs the CLI, then writes the names of the modules loaded by then into argv[1].
_RECORD_MODULES = """
import sys
from webhook.cli import main
try:
    status = main(sys.argv[2:])
except SystemExit as exit:
    status = exit.code
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sys.modules))
sys.exit(status)
"""


def modules_loaded(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """What running the CLI with these arguments imports, beyond the interpreter's start-up."""
    record = tmp_path / "modules.txt"
    baseline = subprocess.run(
        [sys.executable, "-c", "import sys; print(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    done = subprocess.run(
        [sys.executable, "-c", _RECORD_MODULES, str(record), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, set(record.read_text().split()) - set(baseline)


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

    done, loaded = modules_loaded(
        tmp_path, "copy", f"{plain_registry.host}/{unique_repo}:2.1", "--config", config
    )

    assert done.returncode == 0, done.stderr
    assert loaded & NOT_FOR_COPY == set()  # start-up time and memory: see bench/copy.py
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
    overlong = f"quay.io/{'a' * 240}:v1"  # a valid reference whose backup name is too long
    unnamable = run("copy", overlong, "--config", config)

    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert (
        f"error: {plain_registry.host}/{unique_repo}:absent: reading tag absent from the source"
        f" registry {plain_registry.host}: not found"
    ) in missing.stderr
    assert invalid.returncode == 2 and 'invalid image reference "Upper/Case:1"' in invalid.stderr
    assert bad_config.returncode == 2 and "cannot read config" in bad_config.stderr
    assert unnamable.returncode == 2
    assert unnamable.stderr.startswith(f"image-backup: error: {overlong}: its backup name would be")
    assert unnamable.stderr.count(overlong) == 1
    for done in (missing, invalid, bad_config, unnamable):
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


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        *(
            [command, "--help"]
            for command in ("copy", "resolve", "serve", "certs", "review", "restore", "revert")
        ),
    ],
)
def test_help_loads_the_standard_library_only(tmp_path: Path, args: list[str]) -> None:
    done, loaded = modules_loaded(tmp_path, *args)
    assert done.returncode == 0 and done.stdout.startswith("usage: image-backup")
    ours = {"webhook", "webhook.cli", "certs"}  # certs for the Secret's default name
    assert {m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names} == ours
    assert "asyncio" not in loaded


def test_every_error_class_the_cli_reports_exists() -> None:
    for name, code in cli.EXIT_CODES.items():
        module, _, attribute = name.rpartition(".")
        error = getattr(importlib.import_module(module), attribute)
        assert issubclass(error, Exception) and cli.exit_code(error.__new__(error)) == code


def test_every_problem_of_a_config_is_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("backupRegistry: {host: b.io, pathStyle: deep}\ncopy: {concurrency: 0}\n")
    done, loaded = modules_loaded(tmp_path, "copy", "nginx", "--config", str(path))
    assert done.returncode == 2
    assert "aiohttp" not in loaded  # reading a configuration does not load the HTTP stack
    assert done.stderr.splitlines() == [
        f"image-backup: error: {path}: backupRegistry.pathStyle: "
        "must be 'nested' or 'flat', not 'deep'",
        f"image-backup: error: {path}: copy.concurrency: Expected `int` >= 1",
    ]


def test_a_yaml_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("backupRegistry:\n  host: b.io\n    prefix: [x\n")
    done = run("copy", "nginx", "--config", str(path))
    assert (done.returncode, done.stderr) == (
        2,
        f"image-backup: error: {path}:3:11: not valid YAML: mapping values are not allowed here\n",
    )
