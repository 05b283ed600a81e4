"""The server under test, seen from this machine: its Ray replicas, their memory and CPU time
(psutil), and ``/healthz``.

Used by the soak (memory before/after, restarts) and by the fault tests (which replica to kill,
whether the model replicas went idle).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import psutil

from quillman_bench.server_process import http_url

DEPLOYMENTS = ("Ingress", "Transcriber", "LanguageModel", "Speaker")


def listening_pid(port: int) -> int | None:
    """The process with a TCP socket listening on ``port`` (Ray's HTTP proxy for a Serve port);
    None when there is none, or it belongs to a process this user cannot see."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:  # e.g. AccessDenied where listing sockets needs root (macOS)
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def _tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants; empty when it is gone."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def rss_mb(pid: int) -> float | None:
    """Resident memory of the process tree rooted at ``pid`` (the process and its descendants),
    MiB; None when the process is gone."""
    total, seen = 0, False
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
            seen = True
        except psutil.Error:  # exited meanwhile
            continue
    return round(total / 2**20, 1) if seen else None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process tree rooted at ``pid`` has used so far (live
    descendants included); None when the process is gone."""
    total, seen = 0.0, False
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
        seen = True
    return total if seen else None


class ServerProcesses:
    """The Serve replicas of the server behind ``url`` (a 127.0.0.1 port on this machine).

    Ray's HTTP proxy listens on the port; the replicas are its siblings, children of the same
    raylet, titled ``ray::ServeReplica:<app>:<Deployment>``. Another Ray instance on the machine
    (another engineer's server on another port) has its own raylet and is never touched.
    """

    def __init__(self, url: str, app: str = "quillman"):
        self.http = http_url(url)
        self.port = int(self.http.rsplit(":", 1)[1]) if self.http.count(":") == 2 else 80
        self.app = app

    def raylet(self) -> int | None:
        proxy = listening_pid(self.port)
        if proxy is None:
            return None
        try:
            return psutil.Process(proxy).ppid()
        except psutil.Error:
            return None

    def replicas(self) -> dict[str, list[int]]:
        """Deployment name -> PIDs of its live replicas (empty when the server isn't local)."""
        raylet = self.raylet()
        found: dict[str, list[int]] = {name: [] for name in DEPLOYMENTS}
        if raylet is None:
            return found
        try:
            children = psutil.Process(raylet).children()
        except psutil.Error:
            return found
        prefix = f"ray::ServeReplica:{self.app}:"
        for proc in children:
            try:
                title = " ".join(proc.cmdline()).strip()  # Ray's process title
            except psutil.Error:
                continue
            if title.startswith(prefix):
                name = title[len(prefix):].split(".", 1)[0].split()[0]
                found.setdefault(name, []).append(proc.pid)
        return {name: sorted(pids) for name, pids in found.items()}

    def memory_mb(self, replicas: dict[str, list[int]] | None = None) -> dict[str, float]:
        """Resident memory per deployment (summed over its replicas' process trees), MiB."""
        replicas = replicas or self.replicas()
        return {name: round(sum(rss_mb(pid) or 0.0 for pid in pids), 1) for name, pids in replicas.items() if pids}

    def cpu_s(self, replicas: dict[str, list[int]] | None = None) -> dict[str, float]:
        """CPU seconds (user + system) used so far per deployment, summed over its replicas."""
        replicas = replicas or self.replicas()
        return {name: round(sum(cpu_s(pid) or 0.0 for pid in pids), 2) for name, pids in replicas.items() if pids}


def healthz(url: str, timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of ``/healthz``; status 0 when the server can't be reached."""
    try:
        with urllib.request.urlopen(f"{http_url(url)}/healthz", timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}
