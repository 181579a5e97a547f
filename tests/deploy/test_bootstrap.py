"""scripts/ApplyCustomChanges.sh against a temporary root (`--root DIR`: no package manager, no
systemctl): what it writes, that a second run changes nothing, and what --dry-run does."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from agent.config import SenderConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ApplyCustomChanges.sh"
ROOT_WWID = "36000c29000000000000000000000001"

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
CENTOS = 'PRETTY_NAME="CentOS Linux 7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n'


def make_root(base: Path, os_release: str = DEBIAN) -> tuple[Path, Path]:
    """A fresh system's /etc (users root, group disk) and a sysfs with two SCSI disks, one of
    which shows no UUID (a VMware VM without disk.EnableUUID)."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\ndisk:x:6:\n")
    for name, line in (
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\ndisk:*::\n"),
    ):
        (root / "etc" / name).write_text(line)
        (root / "etc" / name).chmod(0o600)
    (root / "etc" / "os-release").write_text(os_release)
    sysfs = base / "sys"
    (sysfs / "block" / "sda" / "device").mkdir(parents=True)
    (sysfs / "block" / "sda" / "device" / "wwid").write_text(
        "naa.6000c29a1b2c3d4e5f60718293a4b5c6\n"
    )
    (sysfs / "block" / "sdb" / "device").mkdir(parents=True)
    return root, sysfs


RELEASE_CONTENT = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "agent",
    "blockio",
    "protocol",
    "scripts",
    "systemd",
    "docs",
)


def release(base: Path) -> Path:
    """A copy of the source tree, as an operator unpacks it; returns its script. The script
    installs what its own tree holds, and this one does not change while the test runs."""
    copy = base / "mtagent-src"

    def ignore(directory: str, names: list[str]) -> list[str]:
        top = Path(directory) == REPO
        return [n for n in names if n == "__pycache__" or (top and n not in RELEASE_CONTENT)]

    shutil.copytree(REPO, copy, ignore=ignore)
    return copy / "scripts" / "ApplyCustomChanges.sh"


def bootstrap(
    root: Path, sysfs: Path, *extra: str, script: Path = SCRIPT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(script),
            "--root",
            str(root),
            "--sysfs",
            str(sysfs),
            "--root-disk-wwid",
            ROOT_WWID,
            "--hostname",
            "mt01.test",
            "--hostname",
            "127.0.0.1",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def tree(root: Path, skip: Callable[[Path], bool] = lambda path: False) -> dict[str, tuple]:
    """Every path below `root`: type, mode, owner and content digest (link target for links)."""
    found: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            if skip(path):
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = None
            found[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, what)
    return found


def ids(root: Path, name: str) -> tuple[int, int]:
    fields = next(
        line.split(":")
        for line in (root / "etc" / "passwd").read_text().splitlines()
        if line.startswith(f"{name}:")
    )
    return int(fields[2]), int(fields[3])


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def test_bootstrap_sets_up_a_master_target_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    root, sysfs = make_root(tmp_path)
    script = release(tmp_path)
    first = bootstrap(root, sysfs, script=script)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "done: " in first.stdout

    # The service user, in the disk group, owning the state.
    passwd = (root / "etc" / "passwd").read_text()
    assert any(
        line.startswith("mtagent:") and line.endswith(":/var/lib/mtagent:/usr/sbin/nologin")
        for line in passwd.splitlines()
    )
    assert "disk:x:6:mtagent" in (root / "etc" / "group").read_text().splitlines()
    uid, gid = ids(root, "mtagent")
    assert uid < 1000  # a system user
    assert owner_and_mode(root / "var" / "lib" / "mtagent") == (uid, gid, 0o750)
    assert owner_and_mode(root / "var" / "lib" / "mtagent" / "retention") == (uid, gid, 0o750)
    assert owner_and_mode(root / "etc" / "mtagent") == (0, gid, 0o750)

    # A configuration the agent accepts, readable by the service only.
    config_path = root / "etc" / "mtagent" / "agent.toml"
    assert owner_and_mode(config_path) == (0, gid, 0o640)
    config = load_config(config_path)
    assert config.tls.cert == Path("/etc/mtagent/tls/server.crt")
    assert config.retention.path == Path("/var/lib/mtagent/retention")
    # Undo data never silently lands on / while the retention drive is not mounted.
    assert config.retention.require_mount
    assert config.disks == ()
    # The process server's certificate is let in, to no group until the operator names them.
    assert config.senders == (SenderConfig("process-server", frozenset(), "replicate"),)

    # Certificates for the names given; the service owns its key, and no one else may read it.
    tls = root / "etc" / "mtagent" / "tls"
    server = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mt01.test" in names.get_values_for_type(x509.DNSName)
    assert owner_and_mode(tls / "server.key") == (uid, gid, 0o600)
    assert owner_and_mode(tls / "ca.key")[2] == 0o600
    assert (tls / "process-server.crt").exists()

    # The unit, enabled; multipath kept off the root disk.
    unit = root / "etc" / "systemd" / "system" / "mtagent.service"
    assert unit.read_bytes() == (script.parent.parent / "systemd" / "mtagent.service").read_bytes()
    wants = unit.parent / "multi-user.target.wants" / "mtagent.service"
    assert os.readlink(wants) == "/etc/systemd/system/mtagent.service"
    multipath = (root / "etc" / "multipath.conf").read_text()
    assert f'blacklist {{\n    wwid "{ROOT_WWID}"\n}}' in multipath

    # The man page and the bash completion (no bash-completion package here: its old directory).
    docs = script.parent.parent / "docs"
    man_page = root / "usr" / "local" / "share" / "man" / "man1" / "mtagent.1"
    assert man_page.read_bytes() == (docs / "mtagent.1").read_bytes()
    completion = root / "etc" / "bash_completion.d" / "mtagent"
    assert completion.read_bytes() == (docs / "mtagent.bash-completion").read_bytes()
    assert owner_and_mode(man_page) == owner_and_mode(completion) == (0, 0, 0o644)

    # The Python environment holds a working agent.
    assert (
        os.readlink(root / "usr" / "local" / "bin" / "mtagent") == "/opt/mtagent/venv/bin/mtagent"
    )
    venv_agent = root / "opt" / "mtagent" / "venv" / "bin" / "mtagent"

    # SCSI UUIDs: sdb shows none, and the operator is told what to do.
    assert "no SCSI UUID for sdb" in first.stdout
    assert "disk.EnableUUID = TRUE" in first.stdout

    # The marker and the log of what was done.
    assert (
        (root / "etc" / "mtagent" / ".ApplyCustomChanges.done").read_text().startswith("applied ")
    )
    log_path = root / "var" / "log" / "mtagent" / "ApplyCustomChanges.log"
    assert "change  create the system user mtagent" in log_path.read_text()

    def not_the_log(path: Path) -> bool:
        return path == log_path

    before = tree(root, skip=not_the_log)
    second = bootstrap(root, sysfs, script=script)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to change" in second.stdout
    assert "  change  " not in second.stdout
    assert tree(root, skip=not_the_log) == before

    # An operator's configuration is never overwritten.
    config_path.write_text(config_path.read_text() + "# edited by the operator\n")
    third = bootstrap(root, sysfs, script=script)
    assert third.returncode == 0 and "agent.toml exists (left as it is)" in third.stdout
    assert config_path.read_text().endswith("# edited by the operator\n")

    help_run = subprocess.run([str(venv_agent), "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "serve" in help_run.stdout


def test_dry_run_says_what_it_would_do_and_changes_nothing(tmp_path: Path) -> None:
    root, sysfs = make_root(tmp_path)
    before = tree(root)
    result = bootstrap(root, sysfs, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  would   create the system user mtagent" in result.stdout
    assert "  would   install mtagent from" in result.stdout
    assert "  change  " not in result.stdout
    assert "changes would be made" in result.stdout
    assert tree(root) == before


def test_the_completion_goes_to_bash_completions_own_directory_where_it_is_installed(
    tmp_path: Path,
) -> None:
    root, sysfs = make_root(tmp_path)
    (root / "usr" / "share" / "bash-completion" / "completions").mkdir(parents=True)
    result = bootstrap(root, sysfs, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"  would   install {root}/usr/share/bash-completion/completions/mtagent" in result.stdout
    )
    assert f"  would   install {root}/usr/local/share/man/man1/mtagent.1" in result.stdout
    assert "bash_completion.d" not in result.stdout


def test_centos_is_recognised_with_its_package_names(tmp_path: Path) -> None:
    root, sysfs = make_root(tmp_path, CENTOS)
    result = bootstrap(root, sysfs, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CentOS Linux 7 (Core) (rhel family)" in result.stdout
    packages = next(line for line in result.stdout.splitlines() if "packages:" in line)
    for package in (
        "xfsprogs",
        "perl",
        "lsscsi",
        "rsync",
        "wget",
        "kexec-tools",
        "python3",
        "device-mapper-multipath",
    ):
        assert package in packages.split("(")[1].rstrip(")").split()


@pytest.mark.parametrize(
    ("os_release", "reason"),
    [
        ('PRETTY_NAME="Alpine Linux v3.19"\nID=alpine\n', "unsupported OS Alpine Linux v3.19"),
        ('PRETTY_NAME="CentOS release 6"\nID="centos"\nVERSION_ID="6"\n', "is too old"),
    ],
)
def test_an_unsupported_os_is_refused_before_anything_changes(
    tmp_path: Path, os_release: str, reason: str
) -> None:
    root, sysfs = make_root(tmp_path, os_release)
    before = tree(root)
    result = bootstrap(root, sysfs)
    assert result.returncode == 1
    assert reason in result.stdout
    assert tree(root, skip=lambda path: "var" in path.parts) == before
