"""Every Serve config we ship parses with Ray Serve's own schema and our AppConfig, and its GPU
placement agrees with its engine settings; the KubeRay manifest embeds the cluster config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from quillman.config import AppConfig, check_gpu_layout, gpu_layout_problems
from quillman.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
KUBERAY = CONFIGS / "kuberay" / "rayservice.yaml"
SERVE_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent != CONFIGS / "kuberay")
DEPLOYMENTS = {"Ingress", "Transcriber", "LanguageModel", "Speaker"}
GPU_STAGES = ("Transcriber", "LanguageModel", "Speaker")
# Files for one box with this many GPUs: all replicas' GPU fractions must fit on it.
GPUS_PER_BOX = {"gpu-1x.yaml": 1}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def validate_serve_config(raw: dict, gpus_per_node: int | None = None) -> list[tuple[AppConfig, dict]]:
    """Ray Serve's schema on the whole file, AppConfig on each app's args, then the GPU layout."""
    ServeDeploySchema.model_validate(raw)
    apps = []
    for app in raw["applications"]:
        assert app["import_path"] == "quillman.app:build"
        config = AppConfig.model_validate(app.get("args") or {})
        deployments = app.get("deployments", [])
        assert {d["name"] for d in deployments} <= DEPLOYMENTS
        check_gpu_layout(config, deployments, gpus_per_node)
        apps.append((config, {d["name"]: d for d in deployments}))
    return apps


def test_the_configs_folder_has_the_gpu_profiles():
    assert {p.name for p in SERVE_CONFIGS} >= {"gpu-1x.yaml", "gpu-cluster.yaml"}


@pytest.mark.parametrize("path", [*SERVE_CONFIGS, ROOT / "serve_config.yaml"], ids=_rel)
def test_serve_config_is_valid(path):
    validate_serve_config(yaml.safe_load(path.read_text()), GPUS_PER_BOX.get(path.name))


def test_gpu_1x_shares_one_gpu_with_a_staggered_vllm_start():
    [(config, deployments)] = validate_serve_config(yaml.safe_load((CONFIGS / "gpu-1x.yaml").read_text()), 1)
    assert (config.asr.backend, config.llm.backend, config.tts.backend) == ("transformers", "vllm", "xtts")
    assert config.llm.model == "HuggingFaceH4/zephyr-7b-beta"
    fractions = [deployments[n]["ray_actor_options"]["num_gpus"] for n in GPU_STAGES]
    replicas = [deployments[n]["num_replicas"] for n in GPU_STAGES]
    assert all(0 < f < 1 for f in fractions)
    assert sum(f * r for f, r in zip(fractions, replicas)) == pytest.approx(1.0)
    assert config.llm.gpu_memory_utilization <= deployments["LanguageModel"]["ray_actor_options"]["num_gpus"]
    # vLLM profiles memory at start: it must not start together with the other engines.
    assert config.llm.startup_delay_s > max(config.asr.startup_delay_s, config.tts.startup_delay_s)
    # Batches can only fill if the replica accepts that many requests at once.
    assert deployments["Transcriber"]["max_ongoing_requests"] >= config.asr.max_batch_size


def test_gpu_cluster_autoscales_every_stage_and_never_to_zero():
    [(config, deployments)] = validate_serve_config(yaml.safe_load((CONFIGS / "gpu-cluster.yaml").read_text()))
    for name in DEPLOYMENTS:
        auto = deployments[name]["autoscaling_config"]
        assert 1 <= auto["min_replicas"] < auto["max_replicas"], name
        assert auto["target_ongoing_requests"] <= deployments[name]["max_ongoing_requests"], name
        assert auto["upscale_delay_s"] < auto["downscale_delay_s"], name
    assert deployments["Transcriber"]["max_ongoing_requests"] >= config.asr.max_batch_size


def _rayservice() -> tuple[dict, list[dict]]:
    documents = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    [service] = [d for d in documents if d["kind"] == "RayService"]
    return service, documents


def test_kuberay_manifest_runs_the_cluster_config():
    service, _ = _rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    embedded = service["spec"]["serveConfigV2"]
    assert isinstance(embedded, str)  # KubeRay takes the Serve config as a YAML string
    raw = yaml.safe_load(embedded)
    validate_serve_config(raw)
    assert raw == yaml.safe_load((CONFIGS / "gpu-cluster.yaml").read_text())


def test_kuberay_cluster_has_a_cpu_head_and_gpu_workers_with_model_cache_and_healthz():
    service, documents = _rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    [workers] = cluster["workerGroupSpecs"]
    pod = workers["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers["minReplicas"] >= 1
    # Model cache: a shared volume holding the Hugging Face cache, read offline.
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims and claims <= {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["HF_HUB_OFFLINE"] == "1" and any(env["HF_HOME"].startswith(m) for m in mounts)
    # Readiness: the app's own health endpoint.
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "localhost:8000/healthz" in probe
    # Same Ray in the manifest and the image.
    ray_image = re.search(r"ARG RAY_IMAGE=rayproject/ray:(\S+?)-", (ROOT / "Dockerfile").read_text())
    assert ray_image and ray_image.group(1) == cluster["rayVersion"]


def test_dockerfile_installs_the_gpu_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[gpu]"' in dockerfile


def test_deploy_doc_says_what_is_not_measured():
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert "not yet measured on a GPU" in text
    for topic in ("KubeRay", "Anyscale", "single GPU"):
        assert topic in text


# --- the layout checks themselves -----------------------------------------------------------


def _gpu_app(**llm) -> AppConfig:
    return AppConfig.model_validate({
        "asr": {"backend": "transformers", "device": "cuda", "compute_type": "float16"},
        "llm": {"backend": "vllm", **llm},
        "tts": {"backend": "xtts", "device": "cuda"},
    })


def _deployments(asr=0.2, llm=0.5, tts=0.3, replicas=1) -> list[dict]:
    return [{"name": n, "num_replicas": replicas, "ray_actor_options": {"num_gpus": g}}
            for n, g in (("Transcriber", asr), ("LanguageModel", llm), ("Speaker", tts))]


def test_layout_accepts_a_matching_split():
    assert gpu_layout_problems(_gpu_app(gpu_memory_utilization=0.45), _deployments(), 1) == []


def test_layout_rejects_vllm_share_above_its_gpu_fraction():
    [problem] = gpu_layout_problems(_gpu_app(gpu_memory_utilization=0.9), _deployments())
    assert "llm.gpu_memory_utilization 0.9" in problem and "num_gpus 0.5" in problem


def test_layout_rejects_gpu_engines_without_a_gpu():
    problems = gpu_layout_problems(_gpu_app(gpu_memory_utilization=0.4), _deployments(asr=0, tts=0))
    assert any(p.startswith("asr.device needs a GPU") and "Transcriber" in p for p in problems)
    assert any(p.startswith("tts.device needs a GPU") and "Speaker" in p for p in problems)


def test_layout_rejects_more_than_the_box_has():
    problems = gpu_layout_problems(_gpu_app(gpu_memory_utilization=0.45), _deployments(replicas=2), 1)
    assert any("ask for 2 GPUs" in p for p in problems)
    with pytest.raises(ConfigError, match="ask for 2 GPUs"):
        check_gpu_layout(_gpu_app(gpu_memory_utilization=0.45), _deployments(replicas=2), 1)


def test_layout_allows_cpu_engines_without_gpus():
    assert gpu_layout_problems(AppConfig(), _deployments(0, 0, 0), 1) == []


# --- settings checked when the config is validated ----------------------------------------------


@pytest.mark.parametrize("keys", [[""], ["   "], ["good-key", "\t"]], ids=["empty", "spaces", "tab-beside-a-key"])
def test_an_empty_api_key_is_refused_with_a_clear_message(keys):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="server.api_keys has an empty or whitespace-only key"):
        AppConfig.model_validate({"server": {"api_keys": keys}})


def test_real_api_keys_and_no_keys_are_accepted():
    from quillman.config import ServerConfig

    assert ServerConfig(api_keys=["k1", "k2"]).api_keys == ["k1", "k2"]
    assert ServerConfig().api_keys == []


def test_each_model_stage_has_a_startup_timeout_longer_than_its_delay():
    from pydantic import ValidationError

    config = AppConfig()
    assert config.asr.startup_timeout_s == config.llm.startup_timeout_s == config.tts.startup_timeout_s == 600
    AppConfig.model_validate({"llm": {"startup_delay_s": 45, "startup_timeout_s": 120}})
    with pytest.raises(ValidationError, match="startup_timeout_s .* must be longer than startup_delay_s"):
        AppConfig.model_validate({"llm": {"startup_delay_s": 60, "startup_timeout_s": 30}})
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"asr": {"startup_timeout_s": 0}})


def test_cpu_nodes_is_cpu_cluster_pinned_to_the_nodes_of_the_simulated_cluster():
    from quillman_bench.local_cluster import CPU_NODES

    nodes = yaml.safe_load((CONFIGS / "cpu-nodes.yaml").read_text())
    cluster = yaml.safe_load((CONFIGS / "cpu-cluster.yaml").read_text())
    assert nodes["applications"][0]["args"] == cluster["applications"][0]["args"]
    [(_, deployments)] = validate_serve_config(nodes)
    assert set(deployments) == DEPLOYMENTS
    capacity = {k: v for resources in CPU_NODES.values() for k, v in resources.items()}
    for name, deployment in deployments.items():
        [(resource, units)] = deployment["ray_actor_options"]["resources"].items()
        replicas = deployment.get("autoscaling_config", {}).get("max_replicas") or deployment["num_replicas"]
        # Room for every replica plus one: a rolling update starts a new replica while the old drains.
        assert capacity[resource] >= units * (replicas + 1), name
    text = (CONFIGS / "cpu-nodes.yaml").read_text()
    for resources in CPU_NODES.values():  # the header's `ray start` lines are the layout's
        assert json.dumps(resources).replace('"', "") in text.replace('"', ""), resources
