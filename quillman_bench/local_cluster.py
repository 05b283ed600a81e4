"""A multi-node Ray cluster on one machine, started the way KubeRay starts pods: ``ray start``.

Each node is one ``ray start --block`` in its own process group, with its own temp dir, free
ports and custom resources (``--resources '{"stage_tts": 2}'``); the application goes on with
``serve deploy`` to the head's dashboard, as KubeRay and Anyscale deploy it. Killing a node is
SIGKILL to its process group (its raylet, agents and every replica process on it, as when a pod
is deleted); stopping the cluster does that to each node it started, never to another Ray
instance on the machine (``ray stop`` would end them all).

Token authentication (Ray 2.60): ``ray start --head`` turns it on whenever a token exists (and
``ray.init()`` makes one in ``~/.ray/auth_token``); the CLI then needs ``RAY_AUTH_MODE=token``.
The cluster here always runs with ``RAY_AUTH_MODE=token`` and a token of its own in
``RAY_AUTH_TOKEN``, so that it neither depends on nor writes ``~/.ray``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from quillman_bench.server_process import ROOT, STOP_TIMEOUT_S, _default_sigint, _executable

logger = logging.getLogger(__name__)

NODE_START_TIMEOUT_S = 120.0
# Each node's object store; Ray's default is 30 % of the machine's memory per node, which several
# nodes on one machine (beside the test suite's server) would ask for each. The app passes only
# small arrays (audio clips, tokens) between stages.
OBJECT_STORE_BYTES = 200 * 1024 * 1024
STARTED = "Ray runtime started."
# The nodes configs/cpu-nodes.yaml pins its stages to (its header has the same `ray start` lines):
# node name -> custom resources; a replica takes 1 of its stage's.
CPU_NODES: dict[str, dict[str, float]] = {
    "head": {"stage_ingress": 2},
    "models": {"stage_asr": 3, "stage_llm": 3},
    "speech": {"stage_tts": 3},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """``ray start`` flags giving a node ports of its own: every default (6379, 8265, 10001,
    52365, ...) may be taken by another Ray instance on the machine (the test suite's server)."""
    return [f"--{flag}={free_port()}" for flag in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]


@dataclass
class RayNode:
    name: str
    resources: dict[str, float]
    process: subprocess.Popen
    log_path: Path
    temp_dir: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the node's process group: the node is lost, not drained."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def keep_logs(self, folder: Path) -> None:
        """Move the node's Ray logs to ``folder/logs-<name>`` and delete its temp dir."""
        for logs in self.temp_dir.glob("session_2*/logs"):
            shutil.move(str(logs), str(folder / f"logs-{self.name}"))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class LocalCluster:
    """Head + worker nodes on this machine; ``env`` is what every node and CLI call gets."""

    workdir: Path
    num_cpus: int = 2  # logical CPUs per node: placement only (the machine has what it has)
    nodes: dict[str, RayNode] = field(default_factory=dict)
    lost: list[RayNode] = field(default_factory=list)  # killed, kept for their logs
    env: dict[str, str] = field(default_factory=dict)
    gcs_address: str = ""
    dashboard_url: str = ""

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    # The replicas import quillman from this checkout, wherever the CLI runs.
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    **self.env}

    # --- nodes --------------------------------------------------------------------------------

    def _spawn(self, name: str, resources: dict[str, float], flags: list[str]) -> RayNode:
        # Short temp dirs: Ray's unix socket paths live under them (108 bytes at most).
        temp_dir = Path(tempfile.mkdtemp(prefix=f"qc-{name[:6]}-", dir="/tmp"))
        log_path = self.workdir / f"node-{name}.log"
        command = [_executable("ray"), "start", "--block", f"--temp-dir={temp_dir}",
                   f"--num-cpus={self.num_cpus}", "--num-gpus=0", f"--resources={json.dumps(resources)}",
                   f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats", *node_ports(), *flags]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=_default_sigint)
        node = self.nodes[name] = RayNode(name, resources, process, log_path, temp_dir)
        return node

    def _wait_started(self, *nodes: RayNode) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        for node in nodes:
            while STARTED not in node.log_path.read_text(errors="replace"):
                if not node.alive or time.monotonic() > deadline:
                    tail = node.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"ray node {node.name} did not start; log {node.log_path}:\n{tail}")
                time.sleep(0.5)
            logger.info("node %s up (pid %d, resources %s)", node.name, node.process.pid, node.resources)

    def start_head(self, resources: dict[str, float]) -> RayNode:
        gcs_port, dashboard_port = free_port(), free_port()
        node = self._spawn("head", resources, [
            "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}"])
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self._wait_started(node)
        return node

    def add_workers(self, workers: dict[str, dict[str, float]]) -> list[RayNode]:
        """Start these worker nodes (name -> resources) together, and wait until each has joined."""
        nodes = [self._spawn(name, resources, [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1"])
                 for name, resources in workers.items()]
        self._wait_started(*nodes)
        return nodes

    def start(self, layout: dict[str, dict[str, float]]) -> None:
        """``layout``: node name -> custom resources; "head" is the head node."""
        self.start_head(layout["head"])
        self.add_workers({name: r for name, r in layout.items() if name != "head"})

    def kill(self, name: str) -> None:
        node = self.nodes.pop(name)
        node.kill()
        self.lost.append(node)

    def shutdown(self) -> None:
        """Every node this cluster started, killed at once: nothing is worth draining at the end,
        and SIGTERM would make each node drain for up to 30 s."""
        for node in self.nodes.values():
            node.kill()
        for node in [*self.nodes.values(), *self.lost]:
            node.keep_logs(self.workdir)
        self.nodes.clear()

    # --- serve --------------------------------------------------------------------------------

    def serve(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``serve <args> --address <dashboard>`` with the cluster's token in the environment."""
        return subprocess.run([_executable("serve"), *args, "--address", self.dashboard_url],
                              cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              check=check, timeout=120)

    def deploy(self, config: str | Path) -> None:
        result = self.serve("deploy", str(config), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"serve deploy {config} failed:\n{result.stdout}\n{result.stderr}")

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.dashboard_url}{path}",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def applications(self) -> dict[str, Any]:
        """The dashboard's ``GET /api/serve/applications/`` (what ``serve status`` prints)."""
        return self._get("/api/serve/applications/")

    def replica_nodes(self, app: str = "quillman") -> dict[str, list[str]]:
        """deployment -> the node (its name here) of each RUNNING replica."""
        names = {}
        for node in self._get("/api/v0/nodes?limit=100&detail=1")["data"]["result"]["result"]:
            names[node["node_id"]] = self.node_named_by(node.get("resources_total", {}))
        details = self.applications()["applications"].get(app, {}).get("deployments", {})
        return {name: [names.get(r.get("node_id"), "?") for r in d.get("replicas", []) if r.get("state") == "RUNNING"]
                for name, d in details.items()}

    def node_named_by(self, resources: dict[str, float]) -> str:
        """Which of our nodes advertises these custom resources (nodes here differ in them)."""
        for name, node in self.nodes.items():
            if all(resources.get(k) == v for k, v in node.resources.items()):
                return name
        return "?"


@contextlib.contextmanager
def local_cluster(workdir: str | Path | None = None, **kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(Path(workdir or tempfile.mkdtemp(prefix="quillman-cluster-")), **kwargs)
    cluster.workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield cluster
    finally:
        cluster.shutdown()
