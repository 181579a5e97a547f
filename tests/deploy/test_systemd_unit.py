"""systemd/mtagent.service: systemd accepts it, its hardening scores what the README says, and
it starts the agent the way the daemon expects (notify, watchdog, a stop longer than the drain)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.commands.cli import build_parser
from agent.server.daemon import CUT_OFF_SECONDS, SHUTDOWN_GRACE_SECONDS

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "mtagent.service"


def directives(section: str) -> dict[str, list[str]]:
    """Every `Key=value` of one section of the unit, values in order."""
    found: dict[str, list[str]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: scripts/test.sh installs it (package systemd)"
        )
    return path


def seconds(value: str) -> float:
    units = {"s": 1, "min": 60, "ms": 0.001}
    match = re.fullmatch(r"(\d+)(s|min|ms)", value)
    assert match, value
    return int(match.group(1)) * units[match.group(2)]


def test_systemd_analyze_verify_accepts_the_unit() -> None:
    # verify insists that ExecStart's program exists: in a mount namespace of its own, /opt
    # holds /opt/mtagent/venv/bin/mtagent, the agent's real entry point, as installed.
    entry_point = Path(sys.executable).parent / "mtagent"
    assert entry_point.exists(), "pip install -e . creates the mtagent entry point"
    script = (
        "set -e; mount -t tmpfs tmpfs /opt; mkdir -p /opt/mtagent/venv/bin; "
        f"ln -s {shlex.quote(str(entry_point))} /opt/mtagent/venv/bin/mtagent; "
        f"exec {systemd_analyze()} verify {shlex.quote(str(UNIT))}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_exposure_score_is_low_and_the_one_the_readme_states() -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for mtagent.service: (\d+\.\d) (\w+)", result.stdout)
    assert match, result.stdout
    score, verdict = float(match.group(1)), match.group(2)
    assert score <= 2.0 and verdict == "OK"
    readme = (REPO / "README.md").read_text()
    assert f"exposure level **{match.group(1)} {verdict}**" in readme


def test_the_unit_is_a_notify_service_with_a_watchdog() -> None:
    service = directives("Service")
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"]
    assert seconds(service["WatchdogSec"][0]) >= 10
    # systemd must wait for the drain (batches in flight finish) and the cut-off after it.
    assert seconds(service["TimeoutStopSec"][0]) > SHUTDOWN_GRACE_SECONDS + CUT_OFF_SECONDS
    # A reload is the agent's SIGHUP (agent.server.reload), not a restart.
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_the_unit_grants_disks_and_the_state_paths_only() -> None:
    service = directives("Service")
    assert service["User"] == ["mtagent"] and service["SupplementaryGroups"] == ["disk"]
    assert service["CapabilityBoundingSet"] == [""] and service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == ["mtagent"]
    assert "-/var/lib/mtagent/retention" in service["ReadWritePaths"]
    assert service["DevicePolicy"] == ["closed"]
    assert sorted(service["DeviceAllow"]) == ["block-device-mapper rw", "block-sd rw"]
    families = service["RestrictAddressFamilies"][0].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]


def test_exec_start_is_a_command_line_the_agent_accepts() -> None:
    program, *arguments = shlex.split(directives("Service")["ExecStart"][0])
    assert program == "/opt/mtagent/venv/bin/mtagent"
    args = build_parser().parse_args(arguments)
    assert args.command == "serve"
    assert str(args.config) == "/etc/mtagent/agent.toml"
