"""The learner file: TOML or JSON, validated; a bad one stops the agent's start with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.online.config import load_config
from edge_agent.online.service import online_from_settings
from edge_agent.process import ServiceStartError

TOML = """
[[learners]]
name = "meter-w4"
backend = "river"
model = "linear"
transformer = "smart_meter"
transformer_options = { lags = 36, horizon = 96, interval = 900 }

[learners.mqtt]
broker = "mqtt://127.0.0.1:1883"
topics = ["site/meters/+/W4"]
qos = 1
client_id = "agent-7-w4"

[learners.save]
min_improvement = 0.05

[[learners]]
name = "classes"
backend = "sklearn"
task = "classification"
classes = ["low", "high"]
"""


def test_a_toml_file_configures_learners_and_their_feeds(tmp_path: Path) -> None:
    path = tmp_path / "online.toml"
    path.write_text(TOML)

    service = online_from_settings(AgentSettings(state_dir=tmp_path, online_config=path))

    assert service is not None
    assert sorted(service.learners) == ["classes", "meter-w4"]
    assert service.learners["meter-w4"].config.save.min_improvement == 0.05
    assert [(f.host, f.port, [r[0] for r in f.routes]) for f in service.feeds] == [
        ("127.0.0.1", 1883, ["site/meters/+/W4"])
    ]
    assert (tmp_path / "online" / "meter-w4" / "versions").is_dir()


def test_json_has_the_same_shape(tmp_path: Path) -> None:
    path = tmp_path / "online.json"
    path.write_text(json.dumps({"learners": [{"name": "a"}, {"name": "b", "backend": "torch"}]}))

    config = load_config(path)

    assert [(c.name, c.backend, c.transformer) for c in config.learners] == [
        ("a", "river", "features"),
        ("b", "torch", "features"),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[learners]]\nname = "Bad Name"\n', "name"),
        ('[[learners]]\nname = "a"\n[[learners]]\nname = "a"\n', "unique"),
        ('[[learners]]\nname = "a"\ntask = "classification"\n', "classes"),
        ('[[learners]]\nname = "a"\nbackend = "tensorflow"\n', "backend"),
        ('[[learners]]\nname = "a"\ntransformer = "nope"\n', "no transformer named 'nope'"),
        ('[[learners]]\nname = "a"\n[learners.mqtt]\nbroker = "http://x"\ntopics = ["t"]\n', "broker"),
        ("[[learners]\n", "online.toml"),
        ('[[learners]]\nname = "a"\nbackend = "torch"\nmodel = "no_such_module:make"\n', "no_such_module"),
        ('[[learners]]\nname = "a"\nbackend = "torch"\nmodel = "json:no_such_factory"\n', "no_such_factory"),
    ],
)
def test_a_bad_file_stops_the_start_with_the_reason(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "online.toml"
    path.write_text(text)

    with pytest.raises(ServiceStartError) as failed:
        online_from_settings(AgentSettings(state_dir=tmp_path, online_config=path))

    assert fragment in str(failed.value)


def test_no_file_no_learners(tmp_path: Path) -> None:
    assert online_from_settings(AgentSettings(state_dir=tmp_path)) is None
