"""The README's quick start works as written: its marked block, run with bash as it stands in a
fresh directory that holds what it reads from the checkout (docs/, scripts/), ends with exit 0,
the agent stopped, and a restored recovery point whose bytes are those sent at its TAG."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SAMPLE_CONFIG = REPO / "docs" / "examples" / "agent.toml"
BLOCK = re.compile(
    r"^<!-- quick-start:begin -->\n```sh\n(?P<script>.*?)^```\n<!-- quick-start:end -->$",
    re.MULTILINE | re.DOTALL,
)
# The whole block (certificates, three pushes, a recovery) takes about 15 s on a 2-core machine.
QUICK_START_TIMEOUT = 300


def quick_start_block() -> str:
    """The shell code between the README's quick-start markers, exactly."""
    found = BLOCK.findall(README.read_text())
    assert len(found) == 1, "the README has one marked quick-start block"
    return str(found[0])


def quick_start_ports() -> list[int]:
    """The ports the sample config listens on."""
    server = load_config(SAMPLE_CONFIG).server
    return [server.listen_port, server.metrics_port]


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        # As the agent binds: a connection of an earlier run in TIME_WAIT does not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_the_sample_config_has_two_machines_of_file_targets() -> None:
    config = load_config(SAMPLE_CONFIG)

    assert {disk.group for disk in config.disks} == {"vm1", "vm2"}
    paths = [disk.path for disk in config.disks if disk.source_size_bytes]
    assert len(paths) == len(config.disks) == 3
    # Relative in the file: everything the agent writes stays beside the config.
    assert all(path is not None and path.is_relative_to(SAMPLE_CONFIG.parent) for path in paths)


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    taken = [port for port in quick_start_ports() if port_taken(port)]
    if taken:
        pytest.skip(f"the quick start's ports {taken} are in use on this host")
    for name in ("docs", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    # As after `. .venv/bin/activate`: mtagent and python3 are the environment's.
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "mtagent").exists(), "the environment has the mtagent command"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    script = tmp_path / "quick-start.sh"
    script.write_text(quick_start_block())

    # Its output goes to a file, not a pipe: the agent the block starts holds its stdout open,
    # and a pipe would not end before the agent does. Its own session: whatever the block leaves
    # running when it fails (the agent) is killed with its process group.
    output_path = tmp_path / "quick-start.out"
    with output_path.open("w") as output_file:
        shell = subprocess.Popen(
            ["bash", "-euo", "pipefail", str(script)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        shell.wait(timeout=QUICK_START_TIMEOUT)
    finally:
        # ProcessLookupError: nothing is left, the block stopped the agent itself.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    output = output_path.read_text()

    mt = tmp_path / "mt"
    log = (mt / "agent.log").read_text() if (mt / "agent.log").exists() else "(no agent log)"
    assert shell.returncode == 0, f"{output}\n--- mt/agent.log:\n{log}"
    assert (mt / "restored" / "vm1-disk0.img").read_bytes() == (
        mt / "sources" / "vm1-disk0.sent.img"
    ).read_bytes()
    assert (mt / "restored" / "vm1-disk1.img").read_bytes() == (
        mt / "sources" / "vm1-disk1.img"
    ).read_bytes()
    # The delta push reached the target: the restore went back in time, not nowhere.
    assert (mt / "targets" / "vm1-disk0.img").read_bytes() == (
        mt / "sources" / "vm1-disk0.img"
    ).read_bytes()
    assert (mt / "targets" / "vm1-disk0.img").read_bytes() != (
        mt / "restored" / "vm1-disk0.img"
    ).read_bytes()
    assert "tag:vm1-initial" in output
