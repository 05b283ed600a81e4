"""The web client in Debian's headless Chromium against the real server.

Chromium's fake capture device plays a synthesized WAV as the microphone: two spoken questions
with silence around them. The test checks what a person would see and hear: both user
transcripts (WER <= 0.3), the streamed assistant text, reply audio actually played, a second
turn, and it records the page's own voice-to-voice latency (fake-mic speech end -> first reply
sample played). Artifacts (screenshot, numbers, console log) go to tests/browser/artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
QUESTIONS = ["What is the capital of France?", "How many days are in a week?"]
LEAD_SILENCE_S = 1.0
# Room for the first reply to finish before the second question (a longer reply is barged in on,
# which the test accepts: the second turn must work either way).
GAP_SILENCE_S = 12.0
TAIL_SILENCE_S = 90.0  # the fake device loops the file: keep the questions from coming back
MAX_WER = 0.3

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def _sync_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install playwright)")
    return sync_playwright


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(_normalize(reference), _normalize(hypothesis))


def synthesize_fake_mic(path: Path) -> list[tuple[float, float]]:
    """Writes silence + Q1 + gap + Q2 + tail as 16-bit mono PCM; returns each question's (start, end) s."""
    rate = None
    parts: list[bytes] = []
    spans = []
    t = 0.0

    def silence(seconds: float) -> None:
        nonlocal t
        parts.append(b"\0\0" * round(seconds * rate))
        t += seconds

    for i, question in enumerate(QUESTIONS):
        speech = path.with_name(f"q{i + 1}.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(speech), question], check=True)
        with wave.open(str(speech), "rb") as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2
            rate = rate or w.getframerate()
            assert w.getframerate() == rate
            frames = w.readframes(w.getnframes())
        silence(LEAD_SILENCE_S if i == 0 else GAP_SILENCE_S)
        duration = len(frames) / 2 / rate
        spans.append((t, t + duration))
        parts.append(frames)
        t += duration
    silence(TAIL_SILENCE_S)

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(parts))
    return spans


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory):
    sync_playwright = _sync_playwright()
    path = tmp_path_factory.mktemp("fake-mic") / "questions.wav"
    return sync_playwright, path, synthesize_fake_mic(path)


def _page_state(page) -> dict:
    """What the page shows, read the way a person reads it, plus the test counters."""
    return page.evaluate(
        """() => ({
          users: [...document.querySelectorAll('.msg-user:not(.is-pending) .msg-text')].map(e => e.textContent),
          assistants: [...document.querySelectorAll('.msg-assistant .msg-text')].map(e => e.textContent),
          status: document.querySelector('#status-text').textContent,
          notice: document.querySelector('#notice').hidden ? null : document.querySelector('#notice-text').textContent,
          q: JSON.parse(JSON.stringify({
            state: window.__quillman.state,
            chunksReceived: window.__quillman.chunksReceived,
            chunksPlayed: window.__quillman.chunksPlayed,
            chunksDropped: window.__quillman.chunksDropped,
            framesSent: window.__quillman.framesSent,
            turns: window.__quillman.turns,
            errors: window.__quillman.errors,
            events: window.__quillman.events,
            prewarm: window.__quillman.prewarm,
          })),
        })"""
    )


def _turn_finished(turn: dict) -> bool:
    return turn.get("status") not in (None, "in_progress")


def test_voice_conversation_in_chromium(server_url, fake_mic):
    sync_playwright, wav, spans = fake_mic
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    result: dict = {"questions": QUESTIONS, "question_spans_s": spans}

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*LAUNCH_ARGS, f"--use-file-for-fake-audio-capture={wav}"],
        )
        try:
            # Phone-sized viewport: the layout must work there.
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

            page.goto(server_url + "/")
            # GET /prewarm finishes: the pill says so.
            page.wait_for_function(
                "() => window.__quillman && window.__quillman.prewarm !== null", timeout=300_000
            )
            state = _page_state(page)
            assert state["q"]["prewarm"]["ok"], state["q"]["prewarm"]
            assert page.locator("#server-status-text").inner_text() == "Models ready"

            # Start talking: the fake device starts playing the WAV when the mic opens.
            page.get_by_role("button", name=re.compile("Start talking")).click()
            page.wait_for_function("() => window.__quillman.state === 'listening'", timeout=30_000)

            # Turn 1: transcript, streamed text, audio played, reply finished.
            page.wait_for_function(
                """() => {
                  const q = window.__quillman, t = q.turns[0];
                  // A chunk counts as played once it has finished sounding, after response.done.
                  return t && t.status !== 'in_progress' && q.chunksPlayed > 0
                    && document.querySelectorAll('.msg-user:not(.is-pending)').length >= 1;
                }""",
                timeout=120_000,
            )
            first = _page_state(page)
            turn1 = first["q"]["turns"][0]
            result["turn1"] = turn1
            assert first["users"], first
            assert _wer(QUESTIONS[0], first["users"][0]) <= MAX_WER, first["users"][0]
            assert first["assistants"] and first["assistants"][0].strip() not in ("", "(interrupted)"), first
            assert turn1["chunks"] > 0, "no reply audio received"
            assert first["q"]["chunksPlayed"] > 0, "reply audio was not played"
            assert turn1["clientLatencyMs"] is not None and turn1["clientLatencyMs"] > 0, turn1

            # Turn 2 (the second question comes from the same fake mic).
            page.wait_for_function(
                """() => {
                  const q = window.__quillman;
                  const t = q.turns[q.turns.length - 1];
                  return document.querySelectorAll('.msg-user:not(.is-pending)').length >= 2
                    && q.turns.length >= 2 && t.status === 'completed'
                    && (q.state === 'listening' || q.chunksPlayed > t.playedAtStart);
                }""",
                timeout=180_000,
            )
            # Let the second reply finish playing, so the screenshot shows a settled conversation.
            page.wait_for_function("() => window.__quillman.state === 'listening'", timeout=120_000)
            second = _page_state(page)
            turn2 = second["q"]["turns"][-1]
            result["turn2"] = turn2
            assert len(second["users"]) >= 2, second["users"]
            assert _wer(QUESTIONS[1], second["users"][1]) <= MAX_WER, second["users"][1]
            assert second["assistants"][-1].strip(), second["assistants"]
            assert turn2["chunks"] > 0
            assert second["q"]["chunksPlayed"] > turn2["playedAtStart"], "second reply was not played"
            assert not second["q"]["errors"], second["q"]["errors"]

            page.screenshot(path=str(ARTIFACTS / "conversation.png"), full_page=False)
            result["final"] = second
            result["wer"] = [_wer(q, u) for q, u in zip(QUESTIONS, second["users"])]
            result["speech_end_to_first_played_audio_ms"] = [
                t["clientLatencyMs"] for t in second["q"]["turns"] if t.get("clientLatencyMs") is not None
            ]
            result["server_speech_end_to_first_audio_ms"] = [
                (t.get("timings") or {}).get("speech_end_to_first_audio_ms") for t in second["q"]["turns"]
            ]
        finally:
            result["console"] = console
            (ARTIFACTS / "browser-result.json").write_text(json.dumps(result, indent=2, default=str))
            browser.close()
    print(
        "speech end -> first played audio (page, ms):", result["speech_end_to_first_played_audio_ms"],
        "| server speech_end_to_first_audio_ms:", result["server_speech_end_to_first_audio_ms"],
    )
