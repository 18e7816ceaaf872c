"""cluster.yaml and the on-premise config validate against Ray's own cluster schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "cluster.yaml", ROOT / "examples" / "cluster" / "cluster-local.yaml"]


def load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_ray_schema(path: Path) -> None:
    config = prepare_config(load(path))  # fills Ray's provider defaults, as `ray up` does
    validate_config(config)
    assert any("raykv" in cmd for cmd in config["setup_commands"])


def test_aws_config_has_instance_profile_and_bucket() -> None:
    config = load(ROOT / "cluster.yaml")
    for node_type in config["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]
    assert any("RAYKV_CHECKPOINT_URL=s3://" in c for c in config["setup_commands"])
    assert config["available_node_types"]["ray.worker.default"]["max_workers"] > \
        config["available_node_types"]["ray.worker.default"]["min_workers"]


def test_schema_check_is_real() -> None:
    """A config with an unknown field fails the same validation."""
    config = prepare_config(load(ROOT / "cluster.yaml"))
    broken = copy.deepcopy(config)
    broken["max_wrokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
