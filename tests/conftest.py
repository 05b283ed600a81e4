"""Shared fixtures: the real server, started the way users start it (``serve run``).

Set QUILLMAN_TEST_URL=http://127.0.0.1:8000 to run the end-to-end tests against a server that
is already running instead of starting one.
"""

from __future__ import annotations

import os

import pytest
import yaml

from quillman_bench.server_process import DEFAULT_HTTP_URL, ROOT, TEST_API_KEY, healthy, serve_run

SERVER_URL = DEFAULT_HTTP_URL
# Models built from shipped weights (Whisper base assembled, GGUF converted for vLLM) are cached
# in the repository's git-ignored .cache/ between runs; servers started here inherit it.
os.environ.setdefault("QUILLMAN_CACHE_DIR", str(ROOT / ".cache" / "quillman"))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    existing = os.environ.get("QUILLMAN_TEST_URL")
    if existing:
        assert healthy(existing), f"QUILLMAN_TEST_URL={existing} is not healthy"
        yield existing
        return
    if healthy(SERVER_URL):
        pytest.fail(f"something already serves {SERVER_URL}; stop it or set QUILLMAN_TEST_URL")
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    # A start failure (ServerStartError) ends with the server's log.
    with serve_run("serve_config.yaml", log_path=log_path) as server:
        yield server.url
    print(f"\nserver log: {log_path}")


@pytest.fixture(scope="session")
def ws_url(server_url: str) -> str:
    return server_url.replace("http://", "ws://") + "/v1/realtime"


KEYED_PORT = 8001


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    """The real graph with API keys required (``QUILLMAN_API_KEYS``) and the web page's own
    client-secret endpoint on (``client_secrets.web_page_endpoint``): what an operator who
    exposes the server runs. One server for the security tests and the browser's WebRTC page
    (a server start is ~30 s of the suite); yields (server, its log)."""
    folder = tmp_path_factory.mktemp("keyed")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["client_secrets"] = {"web_page_endpoint": True}
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_run(path, port=KEYED_PORT, log_path=folder / "serve.log",
                   env={"QUILLMAN_API_KEYS": TEST_API_KEY}) as server:
        yield server, folder / "serve.log"


BROKEN_PORT = 8002


@pytest.fixture(scope="session")
def broken_server(tmp_path_factory: pytest.TempPathFactory):
    """A server whose LanguageModel cannot start (its GGUF is garbage): Serve retries it and
    marks it DEPLOY_FAILED, as it does a replica that crashes in native code. The ingress and
    the other models run; started once the ingress answers, not when healthy."""
    folder = tmp_path_factory.mktemp("broken")
    gguf = folder / "broken.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(4096))
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["llm"]["model"] = str(gguf)
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_run(path, port=BROKEN_PORT, log_path=folder / "serve.log", require_healthy=False) as server:
        yield server
