"""Start and stop the real server (``serve run serve_config.yaml``), and read its metrics.

Used by ``quillman bench --start`` and by the test suite's ``server_url`` fixture, so both
start the server the way users do. Standard library only (no httpx): ``quillman bench`` needs
nothing beyond the runtime dependencies.

Metrics: every Ray node runs a metrics agent that exports all ``ray.serve.metrics`` series in
the Prometheus text format (names prefixed ``ray_``). Its port is random unless fixed with
``ray start --metrics-export-port``; :func:`metrics_urls` finds it in the Ray temp dir
(``<tmp>/ray/prom_metrics_service_discovery.json``, written by the head for Prometheus' file-based
service discovery, and ``<tmp>/ray/session_latest/metrics_export_port_<node id>``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HTTP_URL = "http://127.0.0.1:8000"
TEST_API_KEY = "quillman-test-key-1"  # what the test suite's keyed server requires
STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


class ServerStartError(RuntimeError):
    """``serve run`` exited or did not become healthy in time; the message ends with its log."""


def healthz_status(url: str, timeout_s: float = 5.0) -> int | None:
    """The HTTP status of ``GET {url}/healthz``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def healthy(url: str, timeout_s: float = 5.0) -> bool:
    """``GET {url}/healthz`` answers 200 (every deployment is up)."""
    return healthz_status(url, timeout_s) == 200


def answering(url: str, timeout_s: float = 5.0) -> bool:
    """The ingress answers /healthz, whatever the models are (Serve's proxy says 404 until the
    app's route exists)."""
    return healthz_status(url, timeout_s) not in (None, 404)


def http_url(ws_or_http_url: str) -> str:
    """``ws://host:port/v1/realtime`` -> ``http://host:port`` (http urls pass through)."""
    url = ws_or_http_url.replace("wss://", "https://").replace("ws://", "http://")
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _executable(name: str) -> str:
    """A console script of the running interpreter's environment (``serve``, ``ray``)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def _default_sigint() -> None:
    """In the child: SIGINT stops ``serve run`` cleanly, even when this process was started in
    the background by a shell (which ignores SIGINT there, and ignored signals are inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServeProcess:
    """A ``serve run <config>`` child in its own process group, logging to ``log_path``."""

    def __init__(self, config: str | Path = "serve_config.yaml", port: int | None = None,
                 log_path: str | Path | None = None, cwd: str | Path = ROOT,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S, require_healthy: bool = True):
        self.cwd = Path(cwd)
        # False: started once the ingress answers, even if a model deployment failed (tests of that).
        self.ready = healthy if require_healthy else answering
        self.workdir = Path(tempfile.mkdtemp(prefix="quillman-serve-"))
        path = Path(config)
        if not path.is_absolute() and not path.exists():
            path = self.cwd / path  # the repository's serve_config.yaml from anywhere
        self.config, port = self._with_port(path.resolve(), port)
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path) if log_path else self.workdir / "serve.log"
        self.startup_timeout_s = startup_timeout_s
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen | None = None

    def _with_port(self, config: Path, port: int | None) -> tuple[str, int]:
        """The config to run and its port: a copy with ``http_options.port`` changed if asked."""
        import yaml

        data = yaml.safe_load(config.read_text())
        http = data.setdefault("http_options", {})
        if port is None or port == http.get("port", 8000):
            return str(config), int(http.get("port", 8000))
        http["port"] = port
        copy = self.workdir / config.name
        copy.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(copy), port

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> str:
        """Spawn ``serve run`` and wait for ``/healthz``; returns the http url."""
        if healthy(self.url):
            raise ServerStartError(f"something already serves {self.url}; stop it or target it instead")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [_executable("serve"), "run", self.config], cwd=self.cwd, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_default_sigint)
        logger.info("started serve run %s (pid %d), log %s", self.config, self.process.pid, self.log_path)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.ready(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                reason = ("exited" if self.process.poll() is not None
                          else f"not healthy after {self.startup_timeout_s:g} s")
                self.stop()
                raise ServerStartError(f"serve run {reason}; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(1)
        return self.url

    def stop(self) -> None:
        """SIGINT to the process group (Serve shuts down cleanly), then SIGKILL what is left of it.

        The Ray processes that ``serve run`` started (GCS, raylet, agents) stay in its process
        group, so killing the group ends exactly this server's cluster, and never another Ray
        instance on the machine (which ``ray stop --force`` would).
        """
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group is ours alone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("serve run did not stop in %g s; killing it", STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None


@contextlib.contextmanager
def serve_run(config: str | Path = "serve_config.yaml", port: int | None = None,
              log_path: str | Path | None = None,
              env: dict[str, str] | None = None, require_healthy: bool = True) -> Iterator[ServeProcess]:
    """Run the server for the duration of a ``with`` block; ``server.url`` is its http url.

    ``env``: extra environment for the server only (e.g. ``QUILLMAN_API_KEYS``).
    """
    server = ServeProcess(config, port, log_path, require_healthy=require_healthy)
    server.env.update(env or {})
    try:
        server.start()
        yield server
    finally:
        server.stop()


def add_server_arguments(parser: argparse.ArgumentParser, url: str, port: bool = False) -> None:
    """A measurement's server: ``--url``, or ``--start`` with ``--config`` (and ``--port`` where
    ``port``), as :func:`realtime_server` takes them."""
    parser.add_argument("--url", default=url)
    parser.add_argument("--start", action="store_true", help="run `serve run --config` for the measurement")
    parser.add_argument("--config", default="serve_config.yaml")
    if port:
        parser.add_argument("--port", type=int, default=None, help="with --start: serve on this port")


@contextlib.contextmanager
def realtime_server(url: str, start: bool, config: str | Path = "serve_config.yaml",
                    port: int | None = None) -> Iterator[str]:
    """The Realtime websocket to measure in the ``with`` block: ``url``, or with ``start`` that of
    a ``serve run config`` started for the block and stopped after it (:class:`ServerStartError`
    when it does not come up)."""
    if not start:
        yield url
        return
    server = ServeProcess(config, port=port)
    print(f"starting serve run {config} (log {server.log_path}) ...", file=sys.stderr)
    try:
        yield server.start().replace("http://", "ws://") + "/v1/realtime"
    finally:
        server.stop()


# --- metrics ---------------------------------------------------------------------------------------


def ray_temp_dir() -> Path:
    """Where Ray keeps its sessions: ``$RAY_TMPDIR/ray`` or ``/tmp/ray``."""
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_urls(temp_dir: Path | None = None) -> list[str]:
    """Prometheus endpoints of the local Ray instance(s), as ``http://127.0.0.1:<port>/metrics``.

    ``QUILLMAN_METRICS_URL`` (comma-separated) overrides discovery. Otherwise, without
    duplicates: the targets of ``prom_metrics_service_discovery.json`` (they name the node's IP;
    the agent listens on every interface, so 127.0.0.1 reaches the same port), then the
    ``metrics_export_port_*`` of every session whose driver is still alive (a session folder
    ends with its driver's pid; ``session_latest`` is only the newest Ray instance, which need
    not be the server's), newest first.
    """
    override = os.environ.get("QUILLMAN_METRICS_URL")
    if override:
        return [u.strip() for u in override.split(",") if u.strip()]
    root = temp_dir or ray_temp_dir()
    ports: list[str] = []
    try:
        discovery = json.loads((root / "prom_metrics_service_discovery.json").read_text())
        for group in discovery:
            for target in group.get("targets", []):
                ports.append(str(target).rsplit(":", 1)[-1])
    except (OSError, ValueError, AttributeError):
        pass
    for session in sorted(glob.glob(str(root / "session_2*")), reverse=True):
        pid = session.rsplit("_", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            continue
        for path in sorted(glob.glob(os.path.join(session, "metrics_export_port_*"))):
            with contextlib.suppress(OSError):
                ports.append(Path(path).read_text().strip())
    return [f"http://127.0.0.1:{port}/metrics" for port in dict.fromkeys(p for p in ports if p.isdigit())]


def scrape(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode("utf-8", errors="replace")


def scrape_quillman(urls: list[str] | None = None, prefix: str = "ray_quillman_") -> str:
    """The text of every reachable endpoint that exports ``prefix`` series, joined ("" if none)."""
    texts = []
    for url in urls if urls is not None else metrics_urls():
        try:
            text = scrape(url)
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if prefix in text:
            texts.append(text)
    return "\n".join(texts)


def parse_samples(text: str, prefix: str = "ray_quillman_") -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of every sample whose name starts with ``prefix``."""
    from prometheus_client.parser import text_string_to_metric_families  # ships with ray

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                out.append((sample.name, dict(sample.labels), float(sample.value)))
    return out


if __name__ == "__main__":  # python -m quillman_bench.server_process: print the metrics endpoints
    print("\n".join(metrics_urls()))
