"""Benchmark: `image-backup restore` against `skopeo copy` of the same images, side by side
(``python -m bench.restore``).

The backup registry holds IMAGES images of LAYERS each, as backups are laid out (nested
names under a prefix, each with its tag and its anchor tag). Every repetition restores them
all into an empty registry twice, the two tools' order alternating:

* ours: ``image-backup restore --from-backup-registry --all --to-registry TARGET``, one
  whole process from an installed layout (bench.copy's ``install``), reading the catalog and
  tag lists, as on a new cluster without records;
* skopeo: ``skopeo copy --preserve-digests`` of each image in turn, as a person restoring by
  hand would run it, each a whole process with a cold blob-info cache; its time is the sum.

All registries are real Distribution, TLS with htpasswd, in RAM where it fits. Every copy
is checked: the target serves each image's digest under its tag (``skopeo inspect``). Exit
status 1 if the bar (ours at most BAR times skopeo's time, whole process) is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field

from bench.copy import MB, install, run_timed, scratch_dir, skopeo_copy, stop_on_termination
from tests.support.images import Image, make_image, push
from tests.support.registries import Registry, start_registry, write_docker_config
from tests.support.skopeo import inspect_raw_digest
from webhook.naming import Scheme
from webhook.reference import Reference
from webhook.registry.client import anchor_tag

IMAGES, LAYERS = 20, (2 * MB, 2 * MB, 1 * MB)
BAR = 0.9
SOURCE_HOST = "registry.lost.example:5000"  # where the images came from, once
PREFIX, TAG = "backup", "v1"
USER, PASSWORD = "bench", "bench-password"


@dataclass
class Samples:
    skopeo: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    ours_rss: list[float] = field(default_factory=list)
    skopeo_rss: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, work: str) -> None:
        self.work = work
        self.tls_dir = os.path.join(work, "tls")  # one CA for every registry
        self.backup = self.registry("backup")
        self.scheme = Scheme(self.backup.host, PREFIX)
        self.python = install(work)
        self.images: dict[str, Image] = {}  # source path -> image
        self.samples = Samples()

    def registry(self, name: str) -> Registry:
        return start_registry(
            os.path.join(self.work, name),
            tls=True,
            auth="basic",
            username=USER,
            password=PASSWORD,
            tls_dir=self.tls_dir,
        )

    def prepare(self) -> None:
        """The backups, as the copy engine lays them out: the tag and the anchor tag."""
        print(f"generating and pushing {IMAGES} images", file=sys.stderr)
        cache = os.path.join(self.work, "images")
        for n in range(IMAGES):
            path = f"team/app-{n:02d}"
            image = make_image(cache, LAYERS, seed=1000 + n, fmt="oci")
            backup = self.scheme.repository_for(Reference(SOURCE_HOST, path))
            push(self.backup.backdoor_url, backup, TAG, image)
            push(self.backup.backdoor_url, backup, anchor_tag(image.digest), image)
            self.images[path] = image

    def ours(self, rep: int) -> None:
        target = self.registry(f"ours-{rep}")
        try:
            config = os.path.join(self.work, f"restore-{rep}.json")
            logins = {self.backup.host: (USER, PASSWORD), target.host: (USER, PASSWORD)}
            with open(config, "w") as f:
                json.dump(
                    {
                        "backupRegistry": {
                            "host": self.backup.host,
                            "prefix": PREFIX,
                            "caFile": self.backup.ca_file,
                        },
                        "registries": [{"host": target.host, "caFile": target.ca_file}],
                        "credentials": {
                            "dockerConfig": write_docker_config(f"{config}.auth", logins)
                        },
                    },
                    f,
                )
            argv = [self.python, "-m", "webhook", "restore", "--from-backup-registry", "--all"]
            argv += ["--to-registry", target.host, "--config", config]
            run = run_timed(argv, cwd=os.path.dirname(self.python))
            if f"restored {IMAGES} images into {IMAGES} repositories: {IMAGES} copied" not in (
                run.stdout
            ):
                raise RuntimeError(f"image-backup restore said:\n{run.stdout}")
            self.verify(target, "ours")
            self.samples.ours.append(run.seconds)
            self.samples.ours_rss.append(run.rss_mb)
            log(rep, "ours", run.seconds, f"(peak RSS {run.rss_mb:.1f} MB)")
        finally:
            target.close()

    def skopeo(self, rep: int) -> None:
        target = self.registry(f"skopeo-{rep}")
        try:
            seconds, rss = 0.0, 0.0
            for path in self.images:
                backup = self.scheme.repository_for(Reference(SOURCE_HOST, path))
                run = skopeo_copy(
                    self.backup,
                    f"{backup}:{TAG}",
                    target,
                    f"{path}:{TAG}",
                    all_images=True,
                    work=self.work,
                )
                seconds, rss = seconds + run.seconds, max(rss, run.rss_mb)
            self.verify(target, "skopeo")
            self.samples.skopeo.append(seconds)
            self.samples.skopeo_rss.append(rss)
            log(rep, "skopeo", seconds, f"({IMAGES} processes)")
        finally:
            target.close()

    def verify(self, target: Registry, tool: str) -> None:
        for path, image in self.images.items():
            got = inspect_raw_digest(target, f"{path}:{TAG}")
            if got != image.digest:
                raise RuntimeError(f"{tool}: {target.host}/{path}:{TAG} is {got}")


def log(rep: int, tool: str, seconds: float, extra: str = "") -> None:
    print(f"  rep {rep + 1} restore {tool:<6} {seconds:8.3f}s {extra}", file=sys.stderr)


def report(samples: Samples) -> bool:
    sk, ours = statistics.median(samples.skopeo), statistics.median(samples.ours)
    ratio = ours / sk
    ok = ratio <= BAR
    size = f"{IMAGES}x{sum(LAYERS) // MB} MB ({len(LAYERS)} layers)"
    print(
        f"restore {size}, whole process: `image-backup restore` {ours:.3f}s, "
        f"{IMAGES} x `skopeo copy` {sk:.3f}s, ratio {ratio:.3f} (bar <= {BAR}) "
        f"{'PASS' if ok else 'FAIL'}; peak RSS {max(samples.ours_rss):.1f} MB "
        f"(skopeo {max(samples.skopeo_rss):.1f})"
    )
    print("times: medians; ratio = ours/skopeo (lower is better); MB = MiB")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.restore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    stop_on_termination()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    # The image cache, the backup registry and two targets each hold the payload.
    work = scratch_dir("ibw-bench-restore-", 4 * IMAGES * sum(LAYERS) + 512 * MB)
    try:
        bench = Bench(work)
        try:
            bench.prepare()
            tools = [bench.skopeo, bench.ours]
            for rep in range(args.reps):
                for tool in tools[rep % 2 :] + tools[: rep % 2]:
                    tool(rep)
        finally:
            bench.backup.close()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("load average at end:   {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{args.reps} repetitions, {os.cpu_count()} CPUs\n")
    return 0 if report(bench.samples) else 1


if __name__ == "__main__":
    sys.exit(main())
