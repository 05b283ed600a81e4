"""The local cluster's bookkeeping without Ray: what every node and CLI call gets, which node a
replica is on, and that losing a node ends every process of it (and nothing else)."""

from __future__ import annotations

import os
import select
import subprocess

from quillman_bench.local_cluster import CPU_NODES, LocalCluster, RayNode
from quillman_bench.server_process import ROOT


def test_every_node_and_cli_call_runs_with_token_auth_and_this_checkout(tmp_path):
    env = LocalCluster(tmp_path).env
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert LocalCluster(tmp_path).env["RAY_AUTH_TOKEN"] != env["RAY_AUTH_TOKEN"]  # one per cluster


def test_a_replicas_node_is_named_by_its_custom_resources(tmp_path):
    cluster = LocalCluster(tmp_path)
    for name, resources in CPU_NODES.items():
        cluster.nodes[name] = RayNode(name, resources, None, tmp_path / name, tmp_path)
    assert cluster.node_named_by({"CPU": 2.0, "stage_tts": 3.0, "memory": 1e9}) == "speech"
    assert cluster.node_named_by({"CPU": 2.0, "stage_asr": 3.0, "stage_llm": 3.0}) == "models"
    assert cluster.node_named_by({"CPU": 2.0}) == "?"


def test_killing_a_node_ends_its_whole_process_group(tmp_path):
    # bash says when it has forked both (a fork is in the group at once, before its exec).
    process = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & echo started; wait"], start_new_session=True,
                               stdout=subprocess.PIPE, text=True)
    node = RayNode("speech", {"stage_tts": 3}, process, tmp_path / "log", tmp_path)
    assert process.stdout.readline() == "started\n"
    children = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 3  # bash and both sleeps, like ray start and its raylet, agents, workers
    exits = [os.pidfd_open(int(pid)) for pid in children]  # readable once that process has ended
    try:
        node.kill()
        assert not node.alive
        # SIGKILL is delivered at once, but a process is only gone when the kernel has torn it down.
        for fd in exits:
            assert select.select([fd], [], [], 5)[0] == [fd]
    finally:
        for fd in exits:
            os.close(fd)
        process.stdout.close()
    assert living(process.pid) == []


def living(pgid: int) -> list[str]:
    """The processes of a group that are not zombies (orphans wait for PID 1 to reap them)."""
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return [s for s in states if not s.startswith("Z")]
