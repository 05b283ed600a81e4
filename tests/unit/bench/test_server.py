"""Finding the server's processes and measuring them (quillman_bench.server, psutil).

Against this test process and a child of it; no Ray, no server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import psutil
import pytest

from quillman_bench import server


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc
    proc.kill()
    proc.wait()


def test_listening_pid_finds_the_socket_owner():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert server.listening_pid(port) == os.getpid()
    assert server.listening_pid(port) is None


def test_rss_and_cpu_cover_the_process_tree(child):
    assert child.pid in [p.pid for p in server._tree(os.getpid())]
    own = psutil.Process().memory_info().rss / 2**20
    assert server.rss_mb(os.getpid()) > own  # the child's memory counts too
    assert server.rss_mb(child.pid) > 0
    assert server.cpu_s(os.getpid()) > 0


def test_a_gone_process_measures_none():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert server.rss_mb(proc.pid) is None and server.cpu_s(proc.pid) is None


def test_server_processes_without_a_local_server():
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = server.ServerProcesses(f"ws://127.0.0.1:{port}/v1/realtime")
    assert procs.port == port and procs.raylet() is None
    assert procs.replicas() == {name: [] for name in server.DEPLOYMENTS}
    assert procs.memory_mb() == {} and procs.cpu_s() == {}
    assert server.healthz(f"http://127.0.0.1:{port}", timeout_s=2)[0] == 0


def test_replicas_are_the_raylets_children_titled_as_serve_replicas(monkeypatch):
    # This process plays the raylet; its child gets the process title Ray gives a replica.
    title = "ray::ServeReplica:quillman:Speaker"
    proc = subprocess.Popen([title, "30"], executable=shutil.which("sleep"))
    try:
        procs = server.ServerProcesses("ws://127.0.0.1:1/v1/realtime")
        monkeypatch.setattr(procs, "raylet", os.getpid)
        replicas = procs.replicas()
        assert replicas["Speaker"] == [proc.pid], replicas
        assert replicas["Ingress"] == [] and replicas["LanguageModel"] == []
        assert procs.memory_mb(replicas)["Speaker"] > 0
        assert set(procs.cpu_s(replicas)) == {"Speaker"}
    finally:
        proc.kill()
        proc.wait()
