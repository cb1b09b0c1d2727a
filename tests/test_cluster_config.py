"""cluster.yaml is a valid Ray cluster-launcher config, with token auth and a localhost-only dashboard."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
GPU_NODE = {"CPU": 8, "GPU": 1}  # g6e.2xlarge: 8 vCPUs, one L40S


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_schema(cluster):
    jsonschema.validate(cluster, SCHEMA)  # as written
    validate_config(prepare_config(copy.deepcopy(cluster)))  # as `ray up` fills and checks it


def test_schema_check_catches_a_typo(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_wrkers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrkers"):
        validate_config(prepare_config(broken))


def test_head_plus_autoscaling_gpu_workers(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "head"
    assert set(types) == {"head", "gpu_worker"}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families
    assert types["gpu_worker"]["max_workers"] <= cluster["max_workers"]


def test_every_node_starts_ray_with_token_auth(cluster):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in c for c in ray_starts)
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"  # one shared token


def test_dashboard_listens_on_the_heads_localhost_only(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in (REPO / "cluster.yaml").read_text()


def test_setup_installs_prefsweep_from_the_synced_checkout(cluster):
    assert cluster["file_mounts"]["/home/ubuntu/prefsweep"] == "."
    assert any('pip install -q -e "/home/ubuntu/prefsweep[deepspeed]"' in c for c in cluster["setup_commands"])


@pytest.mark.parametrize("name", ["losses", "simpo", "ftx"])
def test_gpu_sweeps_fit_a_gpu_worker_node(name):
    spec = load_sweep(REPO / "sweeps" / f"{name}.yaml", ["bf16=false"])  # bf16: see test_sweep_spec
    ray_section = spec.base["ray"]
    assert ray_section["use_gpu"] is True
    for resource, amount in ray_section["resources_per_worker"].items():
        assert amount <= GPU_NODE[resource], (resource, amount)
