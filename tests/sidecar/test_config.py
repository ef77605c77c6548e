from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import DEFAULT_MONITORS, load_config, parse_config
from sidecar.errors import ConfigError


def test_defaults_without_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert config.listen == "127.0.0.1:8001"
    assert (config.host, config.port) == ("127.0.0.1", 8001)
    assert config.registry == tmp_path / "registry"
    assert config.state_dir == tmp_path / "var" / "sidecar"
    assert Path(config.log.dir) == tmp_path / "var" / "predlog"
    assert config.log.transport == "file"
    assert (config.checkpoint_interval, config.label_ttl, config.batch) == (2.0, 86400.0, 5000)
    assert config.public_url is None
    assert config.monitors == DEFAULT_MONITORS
    assert config.path is None


def test_full_file_paths_are_relative_to_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "gatewatch.toml"
    path.write_text(
        """
[gateway]
registry = "models"
listen = "127.0.0.1:8000"

[log]
transport = "redis"
dir = "spool"
url = "redis://127.0.0.1:6390/0"

[models.churn]
primary = 2

[sidecar]
listen = "127.0.0.1:9100"
state_dir = "/var/lib/gw"
checkpoint_interval = 1
label_ttl = 3600
batch = 100
public_url = "https://watch.example.com/"

[monitors.drift]
enabled = true
delta = 0.01
var_delta = 1e-6
window = 500
ks_alpha = 0.001
psi_threshold = 0.2

[monitors.accuracy]
window = 200

[monitors.concept]
enabled = false
delta = 0.05

[monitors.shadow]
enabled = false

[[alerts]]
name = "drift"

[[webhooks]]
name = "ci"
"""
    )
    config = load_config(path, environ={})
    assert config.path == path
    assert config.registry == folder / "models"
    assert Path(config.log.dir) == folder / "spool"
    assert config.log.transport == "redis"
    assert config.state_dir == Path("/var/lib/gw")
    assert config.listen == "127.0.0.1:9100"
    assert (config.checkpoint_interval, config.label_ttl, config.batch) == (1.0, 3600.0, 100)
    assert config.public_url == "https://watch.example.com"
    m = config.monitors
    assert (m.drift, m.delta, m.var_delta, m.window, m.ks_alpha, m.psi_threshold) == (
        True,
        0.01,
        1e-6,
        500,
        0.001,
        0.2,
    )
    assert (m.accuracy, m.accuracy_window, m.concept, m.concept_delta, m.shadow) == (
        True,
        200,
        False,
        0.05,
        False,
    )
    assert config.raw["alerts"] == [{"name": "drift"}]
    assert config.raw["webhooks"][0]["name"] == "ci"


def test_environment_overrides(tmp_path: Path) -> None:
    config = parse_config(
        {"sidecar": {"listen": "127.0.0.1:9000", "state_dir": "here"}},
        base_dir=tmp_path,
        environ={
            "GATEWATCH_SIDECAR_LISTEN": "0.0.0.0:9200",
            "GATEWATCH_SIDECAR_STATE_DIR": str(tmp_path / "elsewhere"),
        },
    )
    assert config.listen == "0.0.0.0:9200"
    assert config.state_dir == tmp_path / "elsewhere"
    with pytest.raises(ConfigError, match=r"^GATEWATCH_SIDECAR_LISTEN: must be HOST:PORT"):
        parse_config({}, base_dir=tmp_path, environ={"GATEWATCH_SIDECAR_LISTEN": "nowhere"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"monitors": {"drift": {"window": -1}}},
            "monitors.drift.window: must be a positive integer",
            id="negative-window",
        ),
        pytest.param(
            {"monitors": {"drift": {"window": 10}}},
            "monitors.drift.window: must be at least 30 records",
            id="tiny-window",
        ),
        pytest.param(
            {"monitors": {"drift": {"window": 1.5}}},
            "monitors.drift.window: must be a positive integer",
            id="float-window",
        ),
        pytest.param(
            {"monitors": {"drift": {"delta": 0}}},
            "monitors.drift.delta: must be between 0 and 1",
            id="zero-delta",
        ),
        pytest.param(
            {"monitors": {"drift": {"ks_alpha": 1.5}}},
            "monitors.drift.ks_alpha: must be between 0 and 1",
            id="alpha-above-one",
        ),
        pytest.param(
            {"monitors": {"drift": {"psi_threshold": "high"}}},
            "monitors.drift.psi_threshold: must be a number",
            id="psi-string",
        ),
        pytest.param(
            {"monitors": {"drift": {"colour": "red"}}},
            "monitors.drift.colour: unknown key",
            id="unknown-drift-key",
        ),
        pytest.param(
            {"monitors": {"accuracy": {"enabled": "yes"}}},
            "monitors.accuracy.enabled: must be true or false",
            id="enabled-string",
        ),
        pytest.param(
            {"monitors": {"accuracy": {"window": True}}},
            "monitors.accuracy.window: must be a positive integer",
            id="bool-window",
        ),
        pytest.param(
            {"monitors": {"concept": {"delta": 2}}},
            "monitors.concept.delta: must be between 0 and 1",
            id="concept-delta",
        ),
        pytest.param(
            {"monitors": {"shadow": {"enabled": 1}}},
            "monitors.shadow.enabled: must be true or false",
            id="shadow-int",
        ),
        pytest.param(
            {"monitors": {"latency": {}}}, "monitors.latency: unknown key", id="unknown-monitor"
        ),
        pytest.param({"monitors": {"drift": 3}}, "monitors.drift: must be a table", id="not-table"),
        pytest.param(
            {"sidecar": {"listen": "8001"}}, "sidecar.listen: must be HOST:PORT", id="no-host"
        ),
        pytest.param(
            {"sidecar": {"listen": "127.0.0.1:70000"}},
            "sidecar.listen: must be HOST:PORT",
            id="port-range",
        ),
        pytest.param(
            {"sidecar": {"batch": 0}}, "sidecar.batch: must be a positive integer", id="batch"
        ),
        pytest.param(
            {"sidecar": {"checkpoint_interval": -2}},
            "sidecar.checkpoint_interval: must be a positive number",
            id="interval",
        ),
        pytest.param(
            {"sidecar": {"label_ttl": float("nan")}},
            "sidecar.label_ttl: must be a number",
            id="ttl-nan",
        ),
        pytest.param(
            {"sidecar": {"state_dir": ""}},
            "sidecar.state_dir: must be a non-empty string",
            id="state-dir",
        ),
        pytest.param(
            {"sidecar": {"public_url": "ftp://x"}},
            "sidecar.public_url: must be an http:// or https:// URL",
            id="public-url",
        ),
        pytest.param(
            {"sidecar": {"listn": "x"}}, "sidecar.listn: unknown key", id="unknown-sidecar-key"
        ),
        pytest.param({"sidecar": []}, "sidecar: must be a table", id="sidecar-not-table"),
        pytest.param(
            {"gateway": {"registry": 5}},
            "gateway.registry: must be a non-empty string",
            id="registry",
        ),
        pytest.param({"log": {"sample": 2}}, "log.sample: must be between 0 and 1", id="log"),
        pytest.param({"log": {"colour": 2}}, "log.colour: unknown key", id="log-unknown"),
    ],
)
def test_invalid_values_name_their_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=Path("/srv"), environ={})
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)
    assert caught.value.key == message.split(":")[0]


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sidecar\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_error_accepts_a_preformatted_message() -> None:
    error = ConfigError("alerts[0].condition: unknown condition 'foo'")
    assert (error.key, error.reason) == ("alerts[0].condition", "unknown condition 'foo'")
    assert str(error) == "alerts[0].condition: unknown condition 'foo'"
