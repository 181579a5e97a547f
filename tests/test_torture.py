"""scripts/torture.py, the runner of the torture suite, at its default (bounded) budget: power
cuts and derived crash states under both models, SIGKILLs and disk faults (these need FUSE),
network faults, mangled decoder inputs and invalid live batches; one JSON summary, exit 0 with
no failure. `--long` runs the same with the issue's counts, on demand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def test_the_default_budget_runs_every_section_and_finds_nothing(tmp_path: Path) -> None:
    only = [] if FUSE else ["--only", "net", "--only", "decoder", "--only", "live"]
    result = subprocess.run(
        [sys.executable, "scripts/torture.py", "--keep", str(tmp_path), *only],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["failures"] == 0 and summary["long"] is False
    assert summary["decoder"]["inputs"] == 5_000
    assert summary["net"]["pushes"] == 2 and summary["net"]["connections"] >= 2
    assert summary["live"]["inputs"] == 150 and summary["live"]["accepted"] == 0
    if FUSE:
        for model in ("strict", "lenient"):
            cut, derived = summary["power"][model]["end_to_end"], summary["power"][model]["derived"]
            assert cut["cuts"] == cut["states_checked"] >= 1, cut
            assert cut["start_up_images"] >= 1, cut
            assert derived["states_checked"] == 40, derived
        assert summary["kill"]["cuts"] == summary["kill"]["states_checked"] >= 1
        assert summary["disk"]["faults"] == 6 and summary["disk"]["other_disk_batches"] >= 1
