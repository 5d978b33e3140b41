"""`make demo`: back up a generated image from one local registry into another.

Starts two throw-away Distribution registries on loopback (a plain-HTTP source,
and a backup registry with TLS and a password), pushes a generated image into
the source, runs `image-backup copy`, and has skopeo confirm the backup's digest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import images, skopeo  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="image-backup-demo-") as work:
        step("starting a source registry (plain HTTP) and a backup registry (TLS + password)")
        source = start_registry(f"{work}/source", tls=False, auth="none")
        backup = start_registry(f"{work}/backup", tls=True, auth="basic")
        try:
            print(f"    source: {source.url}\n    backup: {backup.url} (CA {backup.ca_file})")

            step("pushing a generated two-platform image into the source as demo/app:1.0")
            amd64 = images.make_image(f"{work}/images", [3_000_000, 500_000], seed=1, fmt="oci")
            arm64 = images.make_image(
                f"{work}/images",
                [3_000_000, 400_000],
                seed=2,
                fmt="oci",
                platform=("linux", "arm64"),
            )
            index = images.make_index(f"{work}/images", [amd64, arm64], "oci")
            images.push(source.backdoor_url, "demo/app", "1.0", index)
            print(f"    source digest: {index.digest}")

            config = Path(work, "config.yaml")
            config.write_text(
                yaml.safe_dump(
                    {
                        "backupRegistry": {
                            "host": backup.host,
                            "prefix": "mirror",
                            "caFile": backup.ca_file,
                        },
                        "registries": [{"host": source.host, "insecure": True}],
                        "credentials": {"dockerConfig": backup.docker_config},
                    },
                    sort_keys=False,
                )
            )
            step(f"configuration ({config})")
            print(config.read_text().rstrip())

            command = [
                "image-backup",
                "copy",
                f"{source.host}/demo/app:1.0",
                "--config",
                str(config),
            ]
            step("$ " + " ".join(command))
            done = subprocess.run(
                [sys.executable, "-m", "webhook", *command[1:]],
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                return done.returncode
            pinned = done.stdout.strip()
            print(pinned)

            step("skopeo inspect of the backup, over TLS with the backup's credentials")
            repository_and_tag = pinned.split("/", 1)[1].split("@")[0]
            cert_dir = Path(work, "skopeo-certs")
            cert_dir.mkdir()
            shutil.copy(backup.ca_file or "", cert_dir / "ca.crt")
            shown = (
                skopeo.run_skopeo(
                    [
                        "inspect",
                        "--cert-dir",
                        str(cert_dir),
                        "--authfile",
                        backup.docker_config,
                        "--format",
                        "{{.Name}} {{.Digest}}",
                        f"docker://{backup.host}/{repository_and_tag}",
                    ]
                )
                .stdout.decode()
                .strip()
            )
            print(f"    {shown}")
            agreed = skopeo.inspect_raw_digest(backup, repository_and_tag) == index.digest
            print(f"    skopeo digest {'==' if agreed else '!='} source digest {index.digest}")
            return 0 if agreed and pinned.endswith(index.digest) else 1
        finally:
            source.close()
            backup.close()


if __name__ == "__main__":
    sys.exit(main())
