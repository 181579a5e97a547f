"""agent/config.py: the TOML file, its defaults, one-line errors naming file, key, expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    DiskConfig,
    load_config,
    target_location,
)
from agent.errors import AgentError
from blockio.disks.discovery import BlockDisk, DiskNotFound

TLS = """
[tls]
cert = "/etc/mtagent/tls/server.crt"
key = "/etc/mtagent/tls/server.key"
client_ca = "/etc/mtagent/tls/ca.crt"
"""
RETENTION = """
[retention]
path = "/var/lib/mtagent/retention"
"""
MINIMAL = TLS + RETENTION

DESIGN_EXAMPLE = """
[server]
listen = "0.0.0.0:9443"
metrics_listen = "127.0.0.1:9444"   # plain HTTP /metrics and /healthz
state_dir = "/var/lib/mtagent"

[tls]
cert = "/etc/mtagent/tls/server.crt"
key = "/etc/mtagent/tls/server.key"
client_ca = "/etc/mtagent/tls/ca.crt"

[retention]
path = "/var/lib/mtagent/retention"
window = "24h"
max_bytes = "500GiB"
on_full = "shrink"                  # or "pause"

[[disks]]
id = "vm1-disk0"
group = "vm1"
scsi_uuid = "36000c29a1b2c3d4e5f60718293a4b5c6"   # or: path = "/srv/disks/vm1-disk0.img"
"""


def write_config(directory: Path, text: str) -> Path:
    path = directory / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(directory: Path, text: str) -> AgentConfig:
    return load_config(write_config(directory, text))


# -- good files -----------------------------------------------------------------------------------


def test_design_example_loads_with_every_value(tmp_path: Path) -> None:
    config = load_text(tmp_path, DESIGN_EXAMPLE)

    assert config.file == tmp_path / "agent.toml"
    assert (config.server.listen_host, config.server.listen_port) == ("0.0.0.0", 9443)
    assert (config.server.metrics_host, config.server.metrics_port) == ("127.0.0.1", 9444)
    assert config.server.state_dir == Path("/var/lib/mtagent")
    assert config.tls.cert == Path("/etc/mtagent/tls/server.crt")
    assert config.tls.key == Path("/etc/mtagent/tls/server.key")
    assert config.tls.client_ca == Path("/etc/mtagent/tls/ca.crt")
    assert config.retention.path == Path("/var/lib/mtagent/retention")
    assert config.retention.window_seconds == 86400.0
    assert config.retention.max_bytes == 500 * 2**30
    assert config.retention.on_full == "shrink"
    assert config.disks == (
        DiskConfig(
            id="vm1-disk0",
            group="vm1",
            path=None,
            scsi_uuid="6000c29a1b2c3d4e5f60718293a4b5c6",
        ),
    )


def test_minimal_file_takes_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)

    server = config.server
    assert (server.listen_host, server.listen_port) == ("0.0.0.0", 9443)
    assert (server.metrics_host, server.metrics_port) == ("127.0.0.1", 9444)
    assert server.state_dir == Path("/var/lib/mtagent")
    assert server.max_frame_bytes == 4 * 2**20
    assert server.max_batch_bytes == 256 * 2**20
    assert server.stall_timeout_seconds == 60.0
    assert server.hash_read_bytes == 256 * 2**20
    assert config.retention.window_seconds == 24 * 3600.0
    assert config.retention.max_bytes == 500 * 2**30
    assert config.retention.on_full == "shrink"


def test_agent_without_disks_is_valid(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).disks == ()


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    text = """
[server]
state_dir = "state"
[tls]
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "../ca.crt"
[retention]
path = "retention"
[[disks]]
id = "d0"
path = "disks/d0.img"
"""
    config = load_text(tmp_path, text)

    assert config.server.state_dir == tmp_path / "state"
    assert config.tls.cert == tmp_path / "tls/server.crt"
    assert config.tls.key == tmp_path / "tls/server.key"
    assert config.tls.client_ca == tmp_path / "../ca.crt"
    assert config.retention.path == tmp_path / "retention"
    assert config.disks[0].path == tmp_path / "disks/d0.img"


def test_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, MINIMAL + '[[disks]]\nid = "d0"\npath = "d0.img"\n')
    monkeypatch.chdir(tmp_path)

    config = load_config("agent.toml")

    assert config.file == tmp_path / "agent.toml"
    assert config.disks[0].path == tmp_path / "d0.img"


@pytest.mark.parametrize(
    ("server_lines", "field", "value"),
    [
        ('listen = "[::1]:9443"', "listen", ("::1", 9443)),
        ('listen = "[::]:443"', "listen", ("::", 443)),
        ('listen = "127.0.0.1:0"', "listen", ("127.0.0.1", 0)),
        ('listen = "mt.example.com:9443"', "listen", ("mt.example.com", 9443)),
        ('metrics_listen = "0.0.0.0:9100"', "metrics", ("0.0.0.0", 9100)),
        ('metrics_listen = "[fe80::1]:65535"', "metrics", ("fe80::1", 65535)),
    ],
)
def test_listen_addresses_parse_host_and_port(
    tmp_path: Path, server_lines: str, field: str, value: tuple[str, int]
) -> None:
    server = load_text(tmp_path, f"[server]\n{server_lines}\n" + MINIMAL).server

    assert (getattr(server, f"{field}_host"), getattr(server, f"{field}_port")) == value


@pytest.mark.parametrize(
    ("lines", "attribute", "value"),
    [
        ('max_frame_bytes = "64MiB"', "max_frame_bytes", 64 * 2**20),
        ("max_frame_bytes = 65536", "max_frame_bytes", 65536),
        ('max_batch_bytes = "1GiB"', "max_batch_bytes", 2**30),
        ('max_batch_bytes = "64M"', "max_batch_bytes", 64 * 2**20),
        ('stall_timeout = "90s"', "stall_timeout_seconds", 90.0),
        ('stall_timeout = "500ms"', "stall_timeout_seconds", 0.5),
        ('hash_read_bytes = "1GiB"', "hash_read_bytes", 2**30),
        ("hash_read_bytes = 0", "hash_read_bytes", 0),
    ],
)
def test_server_limits_accept_sizes_and_durations(
    tmp_path: Path, lines: str, attribute: str, value: float
) -> None:
    server = load_text(tmp_path, f"[server]\n{lines}\n" + MINIMAL).server

    assert getattr(server, attribute) == value


def test_retention_policy_values_are_read(tmp_path: Path) -> None:
    text = (
        TLS
        + """
[retention]
path = "/r"
window = "1h30m"
max_bytes = "1.5TiB"
on_full = "pause"
"""
    )
    retention = load_text(tmp_path, text).retention

    assert retention.window_seconds == 5400.0
    assert retention.max_bytes == 1536 * 2**30
    assert retention.on_full == "pause"


def test_disk_group_defaults_to_its_id_and_scsi_uuid_is_made_canonical(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[[disks]]
id = "vm2-disk0"
scsi_uuid = "6000C29A-1B2C-3D4E-5F60-718293A4B5C6"
"""
    )
    (disk,) = load_text(tmp_path, text).disks

    assert disk.group == "vm2-disk0"
    assert disk.scsi_uuid == "6000c29a1b2c3d4e5f60718293a4b5c6"
    assert disk.path is None
    assert (disk.source_size_bytes, disk.direct_io) == (None, False)


def test_disk_direct_io_and_source_size_are_read(tmp_path: Path) -> None:
    text = MINIMAL + '[[disks]]\nid = "a"\npath = "/dev/sdb"\n'
    text += 'direct_io = true\nsource_size = "40GiB"\n'
    (disk,) = load_text(tmp_path, text).disks

    assert (disk.direct_io, disk.source_size_bytes) == (True, 40 * 2**30)


def test_disk_lookup_finds_by_id_and_returns_none_for_unknown(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + """
[[disks]]
id = "a"
path = "/srv/a.img"
[[disks]]
id = "b"
group = "g"
path = "/srv/b.img"
"""
    )
    config = load_text(tmp_path, text)

    assert config.disk("b") == DiskConfig(
        id="b", group="g", path=Path("/srv/b.img"), scsi_uuid=None
    )
    assert config.disk("c") is None


def test_default_config_path_is_etc_mtagent() -> None:
    assert Path("/etc/mtagent/agent.toml") == DEFAULT_CONFIG_PATH


# -- bad files: every error names the file, the key and what was expected ------------------------

BAD_FILES = [
    # (label, file text, key, words of the expectation)
    ("unknown section", MINIMAL + "[retenton]\n", "retenton", "one of server, tls"),
    ("unknown key", MINIMAL + "[server]\nlisten_port = 1\n", "server.listen_port", "one of listen"),
    ("typo gets a suggestion", TLS + RETENTION + 'windw = "1h"\n', "retention.windw", '"window"'),
    ("tls missing", RETENTION, "tls", "a [tls] section"),
    ("retention missing", TLS, "retention", "a [retention] section"),
    ("server not a table", 'server = "x"\n' + MINIMAL, "server", "a [server] section"),
    (
        "memory budget below one write group",
        '[server]\nmemory_budget = "16MiB"\n' + MINIMAL,
        "server.memory_budget",
        "at least 25165824 bytes",
    ),
    (
        "tls key missing",
        '[tls]\ncert = "a"\nclient_ca = "c"\n' + RETENTION,
        "tls.key",
        "a path",
    ),
    (
        "tls cert empty",
        MINIMAL.replace('cert = "/etc/mtagent/tls/server.crt"', 'cert = ""'),
        "tls.cert",
        "a path",
    ),
    (
        "path not a string",
        MINIMAL.replace('path = "/var/lib/mtagent/retention"', "path = 3"),
        "retention.path",
        "a path",
    ),
    (
        "window not a duration",
        MINIMAL + 'window = "abc"\n',
        "retention.window",
        'a duration like "24h" or "90m"',
    ),
    ("window bare number", MINIMAL + "window = 3600\n", "retention.window", "a duration"),
    ("window zero", MINIMAL + 'window = "0s"\n', "retention.window", "above zero"),
    (
        "max_bytes not a size",
        MINIMAL + 'max_bytes = "lots"\n',
        "retention.max_bytes",
        'a size like "500GiB"',
    ),
    ("max_bytes zero", MINIMAL + "max_bytes = 0\n", "retention.max_bytes", "above 0"),
    ("max_bytes negative", MINIMAL + "max_bytes = -5\n", "retention.max_bytes", "not negative"),
    ("on_full unknown", MINIMAL + 'on_full = "drop"\n', "retention.on_full", '"shrink" or "pause"'),
    (
        "listen without port",
        '[server]\nlisten = "0.0.0.0"\n' + MINIMAL,
        "server.listen",
        'an address like "0.0.0.0:9443"',
    ),
    (
        "listen port too big",
        '[server]\nlisten = "0.0.0.0:70000"\n' + MINIMAL,
        "server.listen",
        "port 0 to 65535",
    ),
    (
        "listen bare ipv6",
        '[server]\nlisten = "::1:9443"\n' + MINIMAL,
        "server.listen",
        '"[::1]:9443"',
    ),
    ("listen not a string", "[server]\nlisten = 9443\n" + MINIMAL, "server.listen", "an address"),
    (
        "metrics bad bracket",
        '[server]\nmetrics_listen = "[nope]:1"\n' + MINIMAL,
        "server.metrics_listen",
        "an address",
    ),
    (
        "frame too big",
        '[server]\nmax_frame_bytes = "65MiB"\n' + MINIMAL,
        "server.max_frame_bytes",
        "at most 64MiB",
    ),
    (
        "frame zero",
        "[server]\nmax_frame_bytes = 0\n" + MINIMAL,
        "server.max_frame_bytes",
        "above 0",
    ),
    (
        "batch smaller than frame",
        '[server]\nmax_frame_bytes = "8MiB"\nmax_batch_bytes = "4MiB"\n' + MINIMAL,
        "server.max_batch_bytes",
        "at least server.max_frame_bytes",
    ),
    (
        "stall not a duration",
        '[server]\nstall_timeout = "soon"\n' + MINIMAL,
        "server.stall_timeout",
        "a duration",
    ),
    ("disks as a table", MINIMAL + '[disks]\nid = "a"\n', "disks", "an array of tables"),
    ("disk id missing", MINIMAL + '[[disks]]\npath = "/a"\n', "disks[0].id", "letters, digits"),
    (
        "disk id with slash",
        MINIMAL + '[[disks]]\nid = "a/b"\npath = "/a"\n',
        "disks[0].id",
        "letters, digits",
    ),
    (
        "disk id leading dot",
        MINIMAL + '[[disks]]\nid = ".a"\npath = "/a"\n',
        "disks[0].id",
        "starting with a letter or digit",
    ),
    (
        "disk id too long",
        MINIMAL + f'[[disks]]\nid = "{"a" * 65}"\npath = "/a"\n',
        "disks[0].id",
        "1 to 64",
    ),
    (
        "disk group bad",
        MINIMAL + '[[disks]]\nid = "a"\ngroup = "g h"\npath = "/a"\n',
        "disks[0].group",
        "letters, digits",
    ),
    (
        "disk id duplicate",
        MINIMAL + '[[disks]]\nid = "a"\npath = "/a"\n[[disks]]\nid = "a"\npath = "/b"\n',
        "disks[1].id",
        "disks[0] has it",
    ),
    (
        "disk path duplicate",
        MINIMAL + '[[disks]]\nid = "a"\npath = "/a"\n[[disks]]\nid = "b"\npath = "/a"\n',
        "disks[1].path",
        "disks[0] has it",
    ),
    (
        "disk uuid duplicate in another spelling",
        MINIMAL + '[[disks]]\nid = "a"\nscsi_uuid = "36000C29A1B2C3D4E5F60718293A4B5C6"\n'
        '[[disks]]\nid = "b"\nscsi_uuid = "0x6000c29a-1b2c-3d4e-5f60-718293a4b5c6"\n',
        "disks[1].scsi_uuid",
        "disks[0] has it",
    ),
    (
        "disk uuid not an NAA id",
        MINIMAL + '[[disks]]\nid = "a"\nscsi_uuid = "36000c2"\n',
        "disks[0].scsi_uuid",
        "disk.EnableUUID = TRUE",
    ),
    (
        "disk direct_io not a boolean",
        MINIMAL + '[[disks]]\nid = "a"\npath = "/a"\ndirect_io = "yes"\n',
        "disks[0].direct_io",
        "true or false",
    ),
    (
        "disk source_size bad",
        MINIMAL + '[[disks]]\nid = "a"\npath = "/a"\nsource_size = "big"\n',
        "disks[0].source_size",
        "a size like",
    ),
    (
        "disk both targets",
        MINIMAL + '[[disks]]\nid = "a"\npath = "/a"\nscsi_uuid = "36"\n',
        "disks[0]",
        'exactly one of "path" and "scsi_uuid"',
    ),
    (
        "disk no target",
        MINIMAL + '[[disks]]\nid = "a"\n',
        "disks[0]",
        'exactly one of "path" and "scsi_uuid"',
    ),
    (
        "disk uuid empty",
        MINIMAL + '[[disks]]\nid = "a"\nscsi_uuid = ""\n',
        "disks[0].scsi_uuid",
        "a non-empty string",
    ),
    (
        "disk unknown key",
        MINIMAL + '[[disks]]\nid = "a"\npath = "/a"\nsize = 1\n',
        "disks[0].size",
        "one of id, group, path, scsi_uuid",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_value_error_names_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    error = caught.value
    message = str(error)
    assert (error.file, error.key) == (path, key)
    assert expected in error.expected
    assert message.startswith(f"{path}: {key}: expected ")
    assert expected in message
    assert "\n" not in message


def test_error_quotes_the_offending_value_as_in_the_design(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + 'window = "abc"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f'{path}: retention.window: expected a duration like "24h" or "90m", got "abc"'
    )


def test_config_error_is_an_agent_error_for_exit_code_1(tmp_path: Path) -> None:
    with pytest.raises(AgentError):
        load_text(tmp_path, TLS)


def test_missing_file_names_the_file_and_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.file == path
    assert caught.value.key is None
    assert str(caught.value) == (
        f"{path}: expected a readable configuration file, got No such file or directory"
    )


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a readable configuration file"):
        load_config(tmp_path)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + "\nwindow = 24h\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    line = (MINIMAL + "\nwindow = 24h\n").splitlines().index("window = 24h") + 1
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}: expected valid TOML, got ")
    assert f"line {line}" in str(caught.value)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")

    with pytest.raises(ConfigError, match="expected UTF-8 text"):
        load_config(path)


# -- where a disk's target is -----------------------------------------------------------------

UUID = "6000c29a1b2c3d4e5f60718293a4b5c6"


def block_disk(node: str, scsi_id: str | None) -> BlockDisk:
    name = Path(node).name
    return BlockDisk(
        Path(node), Path(f"/sys/block/{name}"), 0, scsi_id, 1 << 30, 512, "VMware", "Virtual disk",
        (), False,
    )  # fmt: skip


def test_a_path_target_is_where_the_config_says() -> None:
    disk = DiskConfig("d0", "g1", Path("/srv/d0.img"), None)

    assert target_location(disk, []) == (Path("/srv/d0.img"), None)


def test_a_scsi_uuid_target_is_the_disk_that_carries_it() -> None:
    disk = DiskConfig("d0", "g1", None, UUID)
    host = [block_disk("/dev/sdb", None), block_disk("/dev/sdc", UUID)]

    assert target_location(disk, host) == (Path("/dev/sdc"), Path("/sys/block/sdc"))


def test_a_scsi_uuid_no_disk_carries_is_not_found() -> None:
    disk = DiskConfig("d0", "g1", None, UUID)

    with pytest.raises(DiskNotFound, match=UUID):
        target_location(disk, [block_disk("/dev/sdb", None)])
