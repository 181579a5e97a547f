"""The [retention] keys of the retention policy: defaults, accepted spellings, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, RetentionConfig, load_config

BASE = """
[tls]
cert = "c"
key = "k"
client_ca = "ca"

[retention]
path = "/srv/retention"
"""


def retention(tmp_path: Path, extra: str) -> RetentionConfig:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + extra)
    return load_config(path).retention


def test_defaults_prune_whole_256_mib_segments_above_90_percent(tmp_path: Path) -> None:
    config = retention(tmp_path, "")
    assert config.high_water == 0.9
    assert config.segment_bytes == 256 << 20
    assert (config.window_seconds, config.on_full) == (86400.0, "shrink")


@pytest.mark.parametrize(
    ("text", "high_water"), [("0.8", 0.8), ('"85%"', 0.85), ("1", 1.0), ('"97.5%"', 0.975)]
)
def test_high_water_is_a_fraction_or_a_percentage(
    tmp_path: Path, text: str, high_water: float
) -> None:
    assert retention(tmp_path, f"high_water = {text}\n").high_water == high_water


@pytest.mark.parametrize("text", ["0", "1.5", '"ninety"', "true", '"120%"'])
def test_a_high_water_mark_that_is_no_fraction_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"retention.high_water: expected a fraction") as error:
        retention(tmp_path, f"high_water = {text}\n")
    assert error.value.key == "retention.high_water"


def test_segment_bytes_takes_a_size_within_bounds(tmp_path: Path) -> None:
    assert retention(tmp_path, 'segment_bytes = "64MiB"\n').segment_bytes == 64 << 20
    for text in ('"32KiB"', '"8GiB"'):
        with pytest.raises(
            ConfigError, match=r"retention.segment_bytes: expected .* 64KiB to 4GiB"
        ):
            retention(tmp_path, f"segment_bytes = {text}\n")


def test_require_mount_is_off_unless_asked_so_existing_configs_keep_starting(
    tmp_path: Path,
) -> None:
    assert retention(tmp_path, "").require_mount is False
    assert retention(tmp_path, "require_mount = true\n").require_mount is True


def test_a_require_mount_that_is_no_boolean_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retention.require_mount: expected true or false"):
        retention(tmp_path, 'require_mount = "yes"\n')
