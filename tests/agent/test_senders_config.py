"""`[[senders]]` in the configuration: who may send what, checked like every other key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, SenderConfig, load_config

MINIMAL = """
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[retention]
path = "retention"
"""


def load(tmp_path: Path, senders: str) -> tuple[SenderConfig, ...] | None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + senders)
    return load_config(path).senders


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
