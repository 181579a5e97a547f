"""The security settings of the configuration, checked like every other key: `[[senders]]` (who
may send what), `[tls] crl`, and the bounds of `[server]` (deadlines, connection caps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import (
    DEFAULT_BATCH_TIMEOUT_SECONDS,
    DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_PEER,
    AgentConfig,
    ConfigError,
    SenderConfig,
    load_config,
)

MINIMAL = """
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[retention]
path = "retention"
"""


def load_whole(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config(path)


def load(tmp_path: Path, senders: str) -> tuple[SenderConfig, ...] | None:
    return load_whole(tmp_path, MINIMAL + senders).senders


def test_no_senders_table_is_none_not_an_empty_table(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None


def test_senders_load_with_their_groups_and_role(tmp_path: Path) -> None:
    senders = load(
        tmp_path,
        """
[[senders]]
name = "ps01"
groups = ["vm1", "vm2"]

[[senders]]
name = "ops.example.com"
groups = ["*"]
role = "admin"
""",
    )

    assert senders == (
        SenderConfig("ps01", frozenset({"vm1", "vm2"}), "replicate"),
        SenderConfig("ops.example.com", frozenset({"*"}), "admin"),
    )
    assert senders[0].reaches("vm1") and not senders[0].reaches("vm3")
    assert senders[1].reaches("any-group")


def test_a_sender_with_no_groups_reaches_none(tmp_path: Path) -> None:
    senders = load(tmp_path, '[[senders]]\nname = "ps01"\ngroups = []\n')

    assert senders is not None and not senders[0].reaches("vm1")


@pytest.mark.parametrize(
    ("entry", "key", "expected"),
    [
        ('name = "ps01"\nrole = "replicate"', "senders[0].groups", "an array of consistency"),
        ('name = "ps01"\ngroups = "vm1"', "senders[0].groups", "an array of consistency"),
        ('name = "ps01"\ngroups = ["vm 1"]', "senders[0].groups", "an array of consistency"),
        ('name = "ps01"\ngroups = ["vm1"]\nrole = "root"', "senders[0].role", '"replicate" or'),
        ('name = "ps_01"\ngroups = ["vm1"]', "senders[0].name", "a client name"),
        ('name = "ca"\ngroups = ["vm1"]', "senders[0].name", "reserved"),
        ('groups = ["vm1"]', "senders[0].name", "a string"),
        ('name = "ps01"\ngroups = ["vm1"]\ngroup = "vm1"', "senders[0].group", "one of name"),
    ],
)
def test_a_bad_sender_names_its_key(tmp_path: Path, entry: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[[senders]]\n{entry}\n")

    assert caught.value.key == key
    assert expected in caught.value.expected


def test_two_senders_of_one_name_whatever_its_case_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            '[[senders]]\nname = "ps01"\ngroups = []\n[[senders]]\nname = "PS01"\ngroups = []\n',
        )

    assert caught.value.key == "senders[1].name"
    assert "senders[0] has it" in caught.value.expected


# -- [tls] crl and the bounds of [server] ----------------------------------------------------------


def test_crl_is_optional_and_relative_to_the_file(tmp_path: Path) -> None:
    assert load_whole(tmp_path, MINIMAL).tls.crl is None
    with_crl = MINIMAL.replace('client_ca = "ca.crt"', 'client_ca = "ca.crt"\ncrl = "crl.pem"')

    assert load_whole(tmp_path, with_crl).tls.crl == tmp_path / "crl.pem"


def test_the_bounds_have_defaults_and_take_their_values(tmp_path: Path) -> None:
    default = load_whole(tmp_path, MINIMAL).server
    assert default.batch_timeout_seconds == DEFAULT_BATCH_TIMEOUT_SECONDS
    assert default.max_connections == DEFAULT_MAX_CONNECTIONS

    server = load_whole(
        tmp_path,
        '[server]\nbatch_timeout = "5m"\nidle_timeout = "20s"\nmax_connections = 10\n'
        "max_connections_per_peer = 2\nmetrics_max_connections = 4\n" + MINIMAL,
    ).server

    assert (server.batch_timeout_seconds, server.idle_timeout_seconds) == (300.0, 20.0)
    assert (server.max_connections, server.max_connections_per_peer) == (10, 2)
    assert server.metrics_max_connections == 4


def test_the_handshake_bounds_have_defaults_and_take_their_values(tmp_path: Path) -> None:
    default = load_whole(tmp_path, MINIMAL).server
    assert default.handshake_timeout_seconds == DEFAULT_HANDSHAKE_TIMEOUT_SECONDS
    assert default.max_handshakes == DEFAULT_MAX_HANDSHAKES
    assert default.max_handshakes_per_peer == DEFAULT_MAX_HANDSHAKES_PER_PEER

    server = load_whole(
        tmp_path,
        '[server]\nhandshake_timeout = "3s"\nmax_handshakes = 20\nmax_handshakes_per_peer = 5\n'
        + MINIMAL,
    ).server

    assert (server.handshake_timeout_seconds, server.max_handshakes) == (3.0, 20)
    assert server.max_handshakes_per_peer == 5


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('handshake_timeout = "0s"', "server.handshake_timeout"),
        ("max_handshakes = 0", "server.max_handshakes"),
        ('max_handshakes_per_peer = "8"', "server.max_handshakes_per_peer"),
    ],
)
def test_a_handshake_bound_out_of_its_range_is_refused_naming_its_key(
    tmp_path: Path, line: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_whole(tmp_path, f"[server]\n{line}\n" + MINIMAL)

    assert caught.value.key == key


@pytest.mark.parametrize("value", ["0", "-1", "true", '"10"', "2.5"])
def test_a_connection_cap_must_be_a_whole_number_of_at_least_one(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_whole(tmp_path, f"[server]\nmax_connections = {value}\n" + MINIMAL)

    assert caught.value.key == "server.max_connections"
    assert "a whole number of at least 1" in caught.value.expected
