"""`make demo` as a newcomer runs it: it shows a backup, an admission answered from memory
and a denial, and its last line sums up, OK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_ends_with_a_summary_of_what_it_showed() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.rstrip().splitlines()[-1]
    assert last.startswith("demo OK: ")
    assert "from memory" in last and "with no copy" in last and "denied" in last
    assert "image_backup_copies_total +0" in done.stdout
    (denial,) = [line for line in done.stdout.splitlines() if line.startswith("    message: ")]
    assert "nginx:9.99" in denial and "not found" in denial
