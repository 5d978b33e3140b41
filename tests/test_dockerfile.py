"""The container image's recipe, checked without a container engine: its stages and the build
context it sees, and the wheel it installs, built from exactly the files it copies and then
started through the console script its ENTRYPOINT names. (tests/test_container.py builds and
runs the image itself, outside the default suite.)
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

from webhook.config import Server

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = str(ROOT / "Dockerfile")
BASE_IMAGE = "python:3.11-slim"
BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|gcc|g\+\+|cc|clang|make|build-essential)\b")

Instruction = dict[str, str]

# Runs the installed wheel's console script the way its generated launcher would, from the
# wheel's files only (its dependencies come from the test environment).
RUN_CONSOLE_SCRIPT = """
import sys
from importlib.metadata import distributions

target = sys.argv[1]
sys.path.insert(0, target)
(dist,) = distributions(path=[target])
(script,) = [e for e in dist.entry_points if e.group == "console_scripts"]
entry = script.load()
import webhook
assert webhook.__file__.startswith(target), webhook.__file__
print(script.name, flush=True)
sys.argv = [script.name, *sys.argv[2:]]
sys.exit(entry())
"""

# Imports every module the wheel holds with only the wheel's files on the path: a module that
# imports something the wheel left out fails here, not at the first admission.
IMPORT_EVERYTHING = """
import importlib
import pkgutil
import sys

target = sys.argv[1]
sys.path.insert(0, target)
for module in pkgutil.walk_packages([target], onerror=lambda name: sys.exit(name)):
    if module.name.endswith(".__main__"):
        continue  # runs the command line when imported
    imported = importlib.import_module(module.name)
    assert imported.__file__.startswith(target), imported.__file__
    print(module.name)
"""


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, comments left out."""
    return [i for i in DockerfileParser(DOCKERFILE).structure if i["instruction"] != "COMMENT"]


def stages() -> list[list[Instruction]]:
    """The instructions of each stage, FROM first (the ARGs before the first FROM left out)."""
    found: list[list[Instruction]] = []
    for instruction in instructions():
        if instruction["instruction"] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def values(stage: list[Instruction], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def exec_form(stage: list[Instruction], name: str) -> list[str]:
    (value,) = values(stage, name)
    form: list[str] = json.loads(value)  # the exec form: no shell between us and the signal
    return form


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line of .dockerignore, in Docker's pattern syntax."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        regex = ""
        for piece in re.split(r"(\*\*/|\*\*|\*|\?)", line.lstrip("!").strip("/")):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                piece, re.escape(piece)
            )
        patterns.append((excludes, re.compile(regex + r"\Z")))
    return patterns


def in_context(path: str) -> bool:
    """Whether the build context holds this file: the last pattern matching it, or any of its
    parent directories, decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for excludes, pattern in ignore_patterns():
        if any(pattern.match(candidate) for candidate in candidates):
            included = not excludes
    return included


def context_files(source: str) -> list[Path]:
    """The files a COPY of `source` takes from the build context."""
    path = ROOT / source
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [f for f in files if in_context(str(f.relative_to(ROOT)))]


def builder_workdir(into: Path) -> Path:
    """The builder stage's WORKDIR under `into`, with what its COPYs put there."""
    builder = stages()[0]
    (workdir,) = values(builder, "WORKDIR")
    root = into / workdir.lstrip("/")
    for value in values(builder, "COPY"):
        *sources, destination = value.split()
        target = root / destination
        for source in sources:
            for file in context_files(source):
                if (ROOT / source).is_dir():
                    placed = target / file.relative_to(ROOT / source)
                elif len(sources) > 1 or destination.endswith("/"):
                    placed = target / file.name
                else:
                    placed = target
                placed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, placed)
    return root


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as the builder stage builds it and installed on its own."""
    scratch = tmp_path_factory.mktemp("image")
    source = builder_workdir(scratch / "builder")
    wheels = scratch / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)], check=True
    )
    (wheel,) = wheels.glob("*.whl")
    target = scratch / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def run_from_wheel(script: str, installed: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, str(installed), *args],
        capture_output=True,
        text=True,
        cwd=installed.parent,  # not the checkout: its own `webhook` must not be found
        timeout=60,
        check=False,
    )


def test_two_stages_from_the_same_base() -> None:
    """Both stages from build argument BASE (the tests build on their own base), the
    official Python image by default."""
    global_args = list(itertools.takewhile(lambda i: i["instruction"] == "ARG", instructions()))
    assert [i["value"] for i in global_args] == [f"BASE={BASE_IMAGE}"]
    builder, runtime = stages()
    assert values(builder, "FROM") == ["${BASE} AS builder"]
    assert values(runtime, "FROM") == ["${BASE}"]
    assert any("pip wheel" in run for run in values(builder, "RUN"))


def test_runtime_stage_installs_only_the_wheels() -> None:
    runtime = stages()[1]
    runs = values(runtime, "RUN")
    assert runs
    for run in runs:
        assert not BUILD_TOOLS.search(run), run
    (install,) = [run for run in runs if "pip install" in run]
    assert "--no-index" in install.split()  # nothing from an index: only the built wheels
    assert "from=builder" in install
    for copy in values(runtime, "COPY"):
        assert copy.startswith("--from=builder"), copy


def test_runtime_stage_runs_unprivileged_on_a_read_only_root() -> None:
    runtime = stages()[1]
    (user,) = values(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can verify it
    assert not gid or gid.isdigit()
    envs = DockerfileParser(DOCKERFILE).envs  # the final stage's
    assert envs["PYTHONDONTWRITEBYTECODE"] == "1"  # no __pycache__ written at run time
    assert envs["PYTHONUNBUFFERED"] == "1"  # event lines reach the log as they happen


def test_entrypoint_command_and_port() -> None:
    runtime = stages()[1]
    (entrypoint,) = exec_form(runtime, "ENTRYPOINT")
    # the console script of the virtual environment the project is installed in, on PATH too
    assert PurePosixPath(entrypoint).name == "image-backup"
    venv = str(PurePosixPath(entrypoint).parent.parent)
    assert any(f"-m venv {venv}" in run for run in values(runtime, "RUN"))
    assert DockerfileParser(DOCKERFILE).envs["PATH"].startswith(f"{venv}/bin:")
    assert exec_form(runtime, "CMD") == ["serve", "--config", "/etc/image-backup/config.yaml"]
    assert values(runtime, "EXPOSE") == [str(Server().port)]


def test_image_matches_the_deployment() -> None:
    runtime = stages()[1]
    deployment: Any = yaml.safe_load((ROOT / "manifests/base/deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (user,) = values(runtime, "USER")
    assert int(user.partition(":")[0]) == spec["securityContext"]["runAsUser"]
    cmd = exec_form(runtime, "CMD")
    assert container["args"][: len(cmd)] == cmd  # the Deployment only adds flags
    assert [p["containerPort"] for p in container["ports"]] == [int(values(runtime, "EXPOSE")[0])]


def test_copied_files_are_in_the_build_context() -> None:
    copies = [value.split() for stage in stages() for value in values(stage, "COPY")]
    from_context = [arguments for arguments in copies if not arguments[0].startswith("--from")]
    assert from_context
    for *sources, _destination in from_context:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert context_files(source), f"{source} is excluded by .dockerignore"
    assert all(in_context(str(p.relative_to(ROOT))) for p in (ROOT / "webhook").rglob("*.py"))
    for kept_out in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "webhook/__pycache__/x.pyc",
    ):
        assert not in_context(kept_out), kept_out


def test_the_wheel_starts_as_the_entrypoint(installed: Path) -> None:
    result = run_from_wheel(RUN_CONSOLE_SCRIPT, installed, "--help")
    assert result.returncode == 0, result.stderr
    name, usage = result.stdout.split("\n", 1)
    assert [name] == [PurePosixPath(e).name for e in exec_form(stages()[1], "ENTRYPOINT")]
    assert usage.startswith("usage: image-backup")


def test_the_default_command_reads_its_config(installed: Path) -> None:
    """CMD is a valid invocation: it gets as far as reading the config it names."""
    cmd = exec_form(stages()[1], "CMD")
    result = run_from_wheel(RUN_CONSOLE_SCRIPT, installed, *cmd)
    assert result.returncode == 2, result.stderr
    assert f"cannot read config {cmd[-1]}" in result.stderr


def test_every_module_of_the_wheel_imports(installed: Path) -> None:
    result = run_from_wheel(IMPORT_EVERYTHING, installed)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {"webhook.cli", "webhook.server", "webhook.admission.handler"} <= imported
