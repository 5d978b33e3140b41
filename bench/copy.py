"""Benchmark: our copy engine against ``skopeo copy``, side by side (``python -m bench.copy``).

A plain-HTTP source registry without auth, a TLS + htpasswd target registry (real
Distribution, from tests.support). Every repetition copies each case into a fresh target
repository, skopeo and ours interleaved (their order alternating between repetitions):

* skopeo runs as a whole process with a cold blob-info cache; its time is the process's;
* ours runs in a fresh ``bench.worker`` process; its time is ``engine.copy`` alone, as a
  long-running webhook performs it. The worker's whole-process wall time is shown too;
* for one case (WHOLE_CASE) ``image-backup copy`` also runs as a whole process, as an
  operator runs it, against skopeo's whole process: start-up, imports and all. It runs from
  an installed layout (see ``install``), not from this checkout's editable install, whose
  import hooks and uncompiled sources an operator's installation does not have.
* the cost of carrying referrers (REFERRERS_CASE against PLAIN_CASE, both ours): the same
  image, once with 3 artifacts referring to it (a cosign signature at its ``.sig`` tag, an
  SBOM attached by OCI 1.1's fallback tag, a signature of that SBOM) and once with none.
  skopeo copies the image alone either way.

Every copy is checked: the target must serve the source's digest (``skopeo inspect``), and
on the first repetition every blob of ours is read back and hashed. Exit status 1 if a bar
fails. MB in the output are MiB (2**20 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support import artifacts
from tests.support.images import (
    Artifact,
    Image,
    make_image,
    make_index,
    push,
    read_back,
)
from tests.support.registries import Registry, start_registry
from tests.support.skopeo import inspect_raw_digest

KB, MB = 1 << 10, 1 << 20
TAG = "bench"
ROOT = Path(__file__).resolve().parent.parent
RSS_CASE, RSS_BAR_MB = "3x200MB", 80.0
# `image-backup copy` against `skopeo copy`, each a whole process: time ratio and peak RSS.
WHOLE_CASE, WHOLE_BAR, WHOLE_RSS_BAR_MB = "3x200MB", 0.9, 70.0
# The same image with 3 referrers against it without: time ratio, ours each.
REFERRERS_CASE, PLAIN_CASE, REFERRERS_BAR = "5x20MB-3referrers", "5x20MB", 1.5
SPDX = "application/spdx+json"


@dataclass(frozen=True)
class Case:
    name: str
    layers: tuple[int, ...]  # layer payload sizes (per platform for an index)
    seed: int  # an index's arm64 image uses seed + 1
    index: bool = False  # a linux/amd64 + linux/arm64 OCI index (skopeo --all)
    cross_repo: bool = False  # the target already holds the blobs in another repository
    referrers: bool = False  # 3 artifacts refer to it (see REFERRERS_CASE)
    bar: float | None = None  # highest passing ratio ours/skopeo

    @property
    def slug(self) -> str:
        return self.name.lower()

    @property
    def payload(self) -> int:
        return sum(self.layers) * (2 if self.index else 1)


CASES = (
    Case("1x1MB", (1 * MB,), seed=1),
    Case("5x20MB", (20 * MB,) * 5, seed=2),
    Case("3x200MB", (200 * MB,) * 3, seed=3, bar=0.85),
    Case("40x256KB", (256 * KB,) * 40, seed=4, bar=0.6),
    Case("index-2x3x10MB", (10 * MB,) * 3, seed=5, index=True, bar=0.8),
    Case("cross-repo", (20 * MB,) * 5, seed=2, cross_repo=True, bar=0.25),  # the 5x20MB image
    Case(REFERRERS_CASE, (20 * MB,) * 5, seed=2, referrers=True),  # the 5x20MB image
)


@dataclass
class Samples:
    skopeo: list[float] = field(default_factory=list)
    skopeo_rss: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    ours_rss: list[float] = field(default_factory=list)
    ours_wall: list[float] = field(default_factory=list)
    ours_stats: dict[str, int] = field(default_factory=dict)  # of the last repetition
    cli: list[float] = field(default_factory=list)  # `image-backup copy`, whole process
    cli_rss: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    seconds: float  # wall time of the whole process
    rss_mb: float  # its peak RSS (at least the launcher's ~9 MB)
    stdout: str


# Linux carries the high-water RSS of the process that calls exec into the new program's
# ru_maxrss, so a program spawned straight from this (~35 MB) process would report at least
# that much. This small launcher (python -I -S, ~9 MB) forks and execs the program instead,
# and measures it: wall time from fork to exit and the rusage from wait4.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        print(f"{sys.argv[2]}: {exc}", file=sys.stderr)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{time.perf_counter() - start} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_timed(argv: list[str], *, env: dict[str, str] | None = None, cwd: str | Path = ROOT) -> Run:
    """Run a program to completion: its wall time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="ibw-bench-run-") as d:
        out, err, measured = (os.path.join(d, n) for n in ("out", "err", "measured"))
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, measured, *argv],
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
                env=env,
                cwd=cwd,
                start_new_session=True,  # one process group: killed as one below
            )
            try:
                proc.wait()
            except BaseException:  # Ctrl-C, SIGTERM: leave nothing running
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        if proc.returncode != 0:
            stderr = Path(err).read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{' '.join(argv)}\nexited with {proc.returncode}:\n{stderr}")
        seconds, maxrss_kib = Path(measured).read_text().split()
        return Run(float(seconds), int(maxrss_kib) / KB, Path(out).read_text())


def skopeo_copy(
    src: Registry, src_ref: str, dst: Registry, dst_ref: str, *, all_images: bool, work: str
) -> Run:
    """``skopeo copy`` as tests.support.skopeo.copy runs it: a fresh private home, so the
    blob-info cache is cold; the target is trusted through a cert dir holding its CA."""
    assert dst.ca_file is not None
    cert_dir = os.path.join(work, "skopeo-certs")
    if not os.path.isdir(cert_dir):
        os.makedirs(cert_dir)
        shutil.copy(dst.ca_file, os.path.join(cert_dir, "ca.crt"))
    with tempfile.TemporaryDirectory(prefix="skopeo-home-", dir=work) as home:
        dirs = {d: os.path.join(home, d) for d in ("data", "config", "cache", "run", "tmp")}
        for d in dirs.values():
            os.makedirs(d, mode=0o700)
        policy = os.path.join(home, "policy.json")
        with open(policy, "w") as f:
            f.write('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "REGISTRY_AUTH"))}
        env.update(
            HOME=home,
            XDG_DATA_HOME=dirs["data"],
            XDG_CONFIG_HOME=dirs["config"],
            XDG_CACHE_HOME=dirs["cache"],
            XDG_RUNTIME_DIR=dirs["run"],
            TMPDIR=dirs["tmp"],
            # containers/image keeps its blob-info cache under XDG_DATA_HOME only for non-root
            _CONTAINERS_ROOTLESS_UID=str(os.geteuid() or 65534),
        )
        argv = ["skopeo", "--policy", policy, "--tmpdir", dirs["tmp"], "copy", "--quiet"]
        argv += ["--preserve-digests", *(["--all"] if all_images else [])]
        argv += ["--src-authfile", src.docker_config, "--src-tls-verify=false"]
        argv += ["--dest-authfile", dst.docker_config, "--dest-cert-dir", cert_dir]
        argv += [f"docker://{src.host}/{src_ref}", f"docker://{dst.host}/{dst_ref}"]
        return run_timed(argv, env=env)


def ours_copy(config: str, source: str, target: str, warm: str | None) -> tuple[Run, Any]:
    argv = [sys.executable, "-m", "bench.worker", "--config", config]
    argv += ["--source", source, "--target", target, "--tag", TAG]
    if warm:
        argv += ["--warm", warm]
    run = run_timed(argv)
    return run, json.loads(run.stdout)


def install(work: str) -> str:
    """A Python with the project installed as a wheel installs it: the packages in its
    site-packages, their bytecode compiled; no editable-install hook. The dependencies are
    this environment's (a path in a .pth file), so nothing is downloaded. Returns the
    interpreter."""
    venv = os.path.join(work, "installed")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for package in ("webhook", "certs"):  # what pyproject.toml packages
        shutil.copytree(
            ROOT / package,
            os.path.join(site, package),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    subprocess.run([sys.executable, "-m", "compileall", "-q", site], check=True)
    python = os.path.join(venv, "bin", "python")
    found = subprocess.run(
        [python, "-c", "import webhook; print(webhook.__file__)"],
        cwd=os.path.dirname(python),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not found.startswith(site):
        raise RuntimeError(f"the installed Python imports webhook from {found}, not {site}")
    return python


def cli_copy(python: str, config: str, source: str, target: str) -> Run:
    """``image-backup copy SOURCE --to TARGET``: the command an operator types."""
    argv = [python, "-m", "webhook", "copy", source, "--to", target, "--config", config]
    # Not from the checkout: `-m` puts the working directory first on the path.
    return run_timed(argv, cwd=os.path.dirname(python))


def verify(target: Registry, repo: str, expected: str, what: str) -> None:
    got = inspect_raw_digest(target, f"{repo}:{TAG}")
    if got != expected:
        raise RuntimeError(f"{what}: {target.host}/{repo}:{TAG} is {got}, expected {expected}")


def attach_referrers(
    source: Registry, repository: str, image: Artifact
) -> list[artifacts.ArtifactManifest]:
    """A cosign signature, an SBOM by the fallback tag and a signature of the SBOM."""
    assert isinstance(image, Image)
    key = artifacts.generate_key()
    signed_as = f"{source.host}/{repository}"
    signature = artifacts.cosign_signature(key, image.digest, signed_as)
    artifacts.push_artifact(source.backdoor_url, repository, signature.tag, signature)
    sbom = artifacts.oci_referrer(image.descriptor(), SPDX, b'{"spdxVersion":"SPDX-2.3"}', SPDX)
    sbom_signature = artifacts.oci_signature(key, sbom.descriptor(), signed_as)
    for referrer in (sbom, sbom_signature):
        artifacts.attach_by_fallback_tag(source.backdoor_url, repository, referrer)
    return [signature, sbom, sbom_signature]


def verify_referrers_index(
    target: Registry, repo: str, image: str, made: list[artifacts.ArtifactManifest]
) -> None:
    """The backup's fallback tag lists the image's OCI referrer, its .sig tag is the source's."""
    signature, sbom, _ = made
    listed = artifacts.listed_by_fallback_tag(target.backdoor_url, repo, image)
    if listed != [sbom.digest] or inspect_raw_digest(target, f"{repo}:{signature.tag}") != (
        signature.digest
    ):
        raise RuntimeError(f"{target.host}/{repo}: the referrers did not travel with the image")


def build(case: Case, cache: str) -> Artifact:
    if not case.index:
        return make_image(cache, case.layers, seed=case.seed, fmt="oci")
    images = [
        make_image(cache, case.layers, seed=case.seed + i, fmt="oci", platform=("linux", arch))
        for i, arch in enumerate(("amd64", "arm64"))
    ]
    return make_index(cache, images, "oci")


def scratch_dir(prefix: str, need: int) -> str:
    """For registry storage and images: in RAM (/dev/shm) when it has `need` bytes free.

    Every run writes a lot, and disk write-back stalls would make both tools' times noisy.
    """
    shm = "/dev/shm"
    in_ram = os.path.isdir(shm) and shutil.disk_usage(shm).free > need
    return tempfile.mkdtemp(prefix=prefix, dir=shm if in_ram else None)


def stop_on_termination() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, through every clean-up on the way."""

    def terminate(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)


class Bench:
    """The two registries, the images in the source and the samples gathered so far."""

    def __init__(self, work: str, source: Registry, target: Registry) -> None:
        self.work, self.source, self.target = work, source, target
        self.config = os.path.join(work, "engine.json")
        with open(self.config, "w") as f:
            json.dump(
                {
                    "backupRegistry": {"host": target.host, "prefix": "", "caFile": target.ca_file},
                    "registries": [{"host": source.host, "insecure": True}],
                    "credentials": {"dockerConfig": target.docker_config},
                },
                f,
            )
        self.digests: dict[str, str] = {}
        self.results: dict[str, Samples] = {}
        self.referrers: dict[str, list[artifacts.ArtifactManifest]] = {}
        self.python = install(work)

    def prepare(self, case: Case) -> None:
        print(f"generating and pushing {case.name}", file=sys.stderr)
        artifact = build(case, os.path.join(self.work, "images"))
        self.digests[case.name] = push(self.source.backdoor_url, f"src/{case.slug}", "v1", artifact)
        self.results[case.name] = Samples()
        if case.referrers:
            self.referrers[case.name] = attach_referrers(self.source, f"src/{case.slug}", artifact)

    def skopeo(self, case: Case, rep: int) -> None:
        src_ref, repo = f"src/{case.slug}:v1", f"bench/{case.slug}/skopeo-{rep}"
        kw: dict[str, Any] = {"all_images": case.index, "work": self.work}
        if case.cross_repo:  # untimed; the timed copy starts with a cold blob-info cache again
            skopeo_copy(self.source, src_ref, self.target, f"{repo}-warm:{TAG}", **kw)
        run = skopeo_copy(self.source, src_ref, self.target, f"{repo}:{TAG}", **kw)
        verify(self.target, repo, self.digests[case.name], "skopeo")
        s = self.results[case.name]
        s.skopeo.append(run.seconds)
        s.skopeo_rss.append(run.rss_mb)
        log(rep, case, "skopeo", run.seconds)

    def ours(self, case: Case, rep: int) -> None:
        src_ref, repo = f"{self.source.host}/src/{case.slug}:v1", f"bench/{case.slug}/ours-{rep}"
        run, out = ours_copy(
            self.config, src_ref, repo, f"{repo}-warm" if case.cross_repo else None
        )
        expected = self.digests[case.name]
        if out["digest"] != expected:
            raise RuntimeError(f"ours reports {out['digest']} copied, expected {expected}")
        verify(self.target, repo, expected, "ours")
        if rep == 0:  # every manifest and blob present and intact (raises otherwise)
            read_back(self.target.backdoor_url, repo, expected)
            for referrer in self.referrers.get(case.name, ()):
                read_back(self.target.backdoor_url, repo, referrer.digest)
            if case.referrers:
                verify_referrers_index(self.target, repo, expected, self.referrers[case.name])
        s = self.results[case.name]
        s.ours.append(out["seconds"])
        s.ours_rss.append(out["maxrss_kib"] / KB)
        s.ours_wall.append(run.seconds)
        s.ours_stats = out["stats"]
        log(rep, case, "ours", out["seconds"], f"(whole process {run.seconds:.3f}s)")

    def cli(self, case: Case, rep: int) -> None:
        if case.name != WHOLE_CASE:
            return
        src_ref, repo = f"{self.source.host}/src/{case.slug}:v1", f"bench/{case.slug}/cli-{rep}"
        run = cli_copy(self.python, self.config, src_ref, f"{self.target.host}/{repo}:{TAG}")
        expected = self.digests[case.name]
        if not run.stdout.strip().endswith(f"@{expected}"):
            raise RuntimeError(f"image-backup copy printed {run.stdout!r}, expected {expected}")
        verify(self.target, repo, expected, "image-backup copy")
        s = self.results[case.name]
        s.cli.append(run.seconds)
        s.cli_rss.append(run.rss_mb)
        log(rep, case, "cli", run.seconds, f"(peak RSS {run.rss_mb:.1f} MB)")


def bench(cases: list[Case], reps: int, work: str) -> dict[str, Samples]:
    source = start_registry(os.path.join(work, "source"), tls=False, auth="none")
    try:
        target = start_registry(os.path.join(work, "target"), tls=True, auth="basic")
        try:
            b = Bench(work, source, target)
            for case in cases:
                b.prepare(case)
            tools = [b.skopeo, b.ours, b.cli]
            for rep in range(reps):
                for case in cases:  # interleaved, the order rotating between repetitions
                    for tool in tools[rep % 3 :] + tools[: rep % 3]:
                        tool(case, rep)
            return b.results
        finally:
            target.close()
    finally:
        source.close()


def log(rep: int, case: Case, tool: str, seconds: float, extra: str = "") -> None:
    print(f"  rep {rep + 1} {case.name:<15} {tool:<6} {seconds:8.3f}s {extra}", file=sys.stderr)


def report(cases: list[Case], results: dict[str, Samples]) -> bool:
    """Print the table; True if every bar passes."""
    head = (
        f"{'case':<15} {'skopeo s':>9} {'ours s':>8} {'ratio':>6} {'bar':>6} {'result':>6} "
        f"{'skopeo MB':>9} {'ours MB':>8} {'ours proc s':>11}  ours blobs up/mnt/had"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for case in cases:
        s = results[case.name]
        sk, ours = statistics.median(s.skopeo), statistics.median(s.ours)
        ratio = ours / sk
        verdict = "" if case.bar is None else ("PASS" if ratio <= case.bar else "FAIL")
        ok &= verdict != "FAIL"
        st = s.ours_stats
        print(
            f"{case.name:<15} {sk:>9.3f} {ours:>8.3f} {ratio:>6.2f} "
            f"{'' if case.bar is None else f'<={case.bar}':>6} {verdict:>6} "
            f"{max(s.skopeo_rss):>9.1f} {max(s.ours_rss):>8.1f} "
            f"{statistics.median(s.ours_wall):>11.3f}  "
            f"{st['blobs_uploaded']}/{st['blobs_mounted']}/{st['blobs_present']}"
            f" ({st['bytes_uploaded'] / MB:.1f} MB up)"
        )
    if RSS_CASE in results:
        rss = max(results[RSS_CASE].ours_rss)
        verdict = "PASS" if rss <= RSS_BAR_MB else "FAIL"
        ok &= verdict == "PASS"
        print(
            f"\nours' peak RSS during {RSS_CASE}: {rss:.1f} MB (bar <= {RSS_BAR_MB:.0f}) {verdict}"
        )
    if WHOLE_CASE in results:
        ok &= report_whole_process(results[WHOLE_CASE])
    if REFERRERS_CASE in results and PLAIN_CASE in results:
        ok &= report_referrers(results[REFERRERS_CASE], results[PLAIN_CASE])
    print("times: medians; ratio = ours/skopeo (lower is better); MB = MiB; RSS = max over reps")
    return ok


def report_whole_process(s: Samples) -> bool:
    """The row beside the in-process one: `image-backup copy` as an operator runs it."""
    sk, cli = statistics.median(s.skopeo), statistics.median(s.cli)
    ratio, rss = cli / sk, max(s.cli_rss)
    time_ok, rss_ok = ratio <= WHOLE_BAR, rss <= WHOLE_RSS_BAR_MB
    print(
        f"\nwhole process, {WHOLE_CASE}: `image-backup copy` {cli:.3f}s, `skopeo copy` "
        f"{sk:.3f}s, ratio {ratio:.3f} (bar <= {WHOLE_BAR}) {'PASS' if time_ok else 'FAIL'}; "
        f"peak RSS {rss:.1f} MB (bar <= {WHOLE_RSS_BAR_MB:.0f}, skopeo {max(s.skopeo_rss):.1f}) "
        f"{'PASS' if rss_ok else 'FAIL'}"
    )
    return time_ok and rss_ok


def report_referrers(signed: Samples, plain: Samples) -> bool:
    """What carrying 3 referrers costs: the same image's copy with them, and without."""
    with_them, without = statistics.median(signed.ours), statistics.median(plain.ours)
    ratio = with_them / without
    ok = ratio <= REFERRERS_BAR
    print(
        f"\nreferrers, {PLAIN_CASE} image: with 3 referrers {with_them:.3f}s, without "
        f"{without:.3f}s: +{(with_them - without) * 1000:.0f} ms, ratio {ratio:.3f} "
        f"(bar <= {REFERRERS_BAR}) {'PASS' if ok else 'FAIL'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.copy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--cases", help=f"comma-separated, from {','.join(c.name for c in CASES)}")
    args = parser.parse_args()
    by_name = {c.name: c for c in CASES}
    names = args.cases.split(",") if args.cases else list(by_name)
    if unknown := [n for n in names if n not in by_name]:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    cases = [by_name[n] for n in names]

    stop_on_termination()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    # The image cache, the source and the target each hold the payload; headroom on top.
    work = scratch_dir("ibw-bench-", 3 * sum(c.payload for c in cases) + 1024 * MB)
    print(f"registries and images in {work}", file=sys.stderr)
    try:
        results = bench(cases, args.reps, work)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("load average at end:   {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{args.reps} repetitions, {os.cpu_count()} CPUs\n")
    return 0 if report(cases, results) else 1


if __name__ == "__main__":
    sys.exit(main())
