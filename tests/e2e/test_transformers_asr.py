"""The GPU profile's ASR path through the real graph on CPU: ``asr.backend: transformers`` on real
Whisper weights (the shipped tiny.en, converted once to a transformers folder), its Transcriber
feeding ``@serve.batch``; two sessions speak at once."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from quillman.client import RealtimeClient  # noqa: E402
from quillman.loadtest.speech import spoken_question as spoken  # noqa: E402
from quillman.loadtest.speech import word_error_rate  # noqa: E402
from quillman.server_process import ROOT, serve_run  # noqa: E402

pytestmark = pytest.mark.e2e

PORT = 8006
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?"]


@pytest.fixture(scope="module")
def transformers_asr_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transformers-asr")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["asr"] = {
        "backend": "transformers", "model": "tiny.en", "device": "cpu", "compute_type": "float32",
        "language": "en", "max_new_tokens": 48, "max_batch_size": 4, "batch_wait_timeout_s": 0.05,
    }
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with serve_run(path, port=PORT, log_path=folder / "serve.log") as server:
        yield server.url


async def test_two_sessions_are_transcribed_by_the_transformers_backend(transformers_asr_url):
    health = httpx.get(f"{transformers_asr_url}/healthz", timeout=10).json()
    assert health["deployments"]["Transcriber"]["status"] == "healthy", health
    ws_url = transformers_asr_url.replace("http://", "ws://") + "/v1/realtime"

    async def turn(question: str):
        async with RealtimeClient(ws_url) as client:
            return await client.talk(spoken(question), 24000)

    results = await asyncio.gather(*(turn(q) for q in QUESTIONS))
    for question, result in zip(QUESTIONS, results):
        assert result.status == "completed", result.errors
        assert word_error_rate(question, result.user_transcript) <= 0.34, result.user_transcript
        assert result.reply_audio_s > 0.3
