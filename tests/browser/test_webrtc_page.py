"""The web client over WebRTC (its default) in headless Chromium, against a keyed server.

The server requires an API key and gives its own page one-use client secrets
(``client_secrets.web_page_endpoint``): the page is opened without a key, gets a secret from
``POST /web/client_secret``, opens a call with it (``POST /v1/realtime/calls``), speaks a question
from Chromium's fake microphone (an espeak-ng WAV) over the Opus track, and plays the reply from
the server's track. The API key never reaches the page.
"""

from __future__ import annotations

import json
import re

import pytest
from test_browser import (  # noqa: F401
    ARTIFACTS,
    LONG_QUESTION,
    MAX_WER,
    QUESTIONS,
    READ_PAGE,
    _save,
    _wer,
    open_page,
    sync_playwright,  # the fixture (pytest finds it by this name)
    synthesize_fake_mic,
)

from quillman_bench.server_process import TEST_API_KEY

pytestmark = pytest.mark.browser

API_KEY = TEST_API_KEY  # the keyed server of tests/conftest.py


def test_a_spoken_question_over_webrtc_with_a_client_secret(keyed_server, sync_playwright, tmp_path):  # noqa: F811
    server, log_path = keyed_server
    url = server.url
    wav = tmp_path / "question.wav"
    # The fake device plays from the moment the mic opens; the call is up a moment later (the
    # secret, ICE gathering, the offer, DTLS): what is said before is not heard, as with a person
    # who talks before the page says "Listening".
    spans = synthesize_fake_mic(wav, [(3.0, QUESTIONS[0])])
    console: list[str] = []
    requests: list[str] = []
    result: dict = {"question": QUESTIONS[0], "span_s": spans}
    try:
        with open_page(sync_playwright, "webrtc", wav=wav, console=console, requests=requests) as page:
            page.goto(url + "/")
            page.wait_for_function("() => window.__quillman && window.__quillman.prewarm !== null", timeout=60_000)
            assert page.locator("#transport-select").input_value() == "webrtc"
            page.get_by_role("button", name=re.compile("Start talking")).click()
            page.wait_for_function("() => window.__quillman.state === 'listening'", timeout=60_000)
            assert page.evaluate("() => window.__quillman.transport") == "webrtc"
            page.wait_for_function(
                """() => {
                  const q = window.__quillman, t = q.turns[0];
                  return t && t.status !== 'in_progress' && q.state === 'listening' && q.rtcAudioMs > 0
                    && document.querySelectorAll('.msg-user:not(.is-pending)').length >= 1;
                }""",
                timeout=180_000,
            )
            state = result["final"] = page.evaluate(READ_PAGE)
            state["rtcAudioMs"] = page.evaluate("() => window.__quillman.rtcAudioMs")
            turn = state["q"]["turns"][0]
            assert _wer(QUESTIONS[0], state["users"][0]) <= MAX_WER, state["users"]
            assert state["assistants"][0].strip(), state["assistants"]
            assert turn["status"] == "completed" and turn["clientLatencyMs"] is not None, turn
            events = state["q"]["events"]
            assert events.get("output_audio_buffer.started") and events.get("output_audio_buffer.stopped"), events
            assert "response.output_audio.delta" not in events  # the audio came on the track
            assert state["q"]["framesSent"] == 0  # no base64 audio over the channel
            assert state["rtcAudioMs"] >= 500, state["rtcAudioMs"]  # the reply was audible in the page
            assert not state["q"]["errors"], state["q"]["errors"]
            page.screenshot(path=str(ARTIFACTS / "webrtc.png"))
            # The page asked its server for a secret and never had the key.
            assert any(u.endswith("/web/client_secret") for u in requests)
            assert API_KEY not in json.dumps(page.evaluate("() => ({...sessionStorage, ...localStorage})"))
            assert API_KEY not in page.content()
            refused = [c for c in console if c.startswith(("error", "pageerror")) and "401" not in c]
            assert not refused, console  # (401: the page may not run /prewarm on a keyed server)
    finally:
        _save("webrtc", result, console)
    # Secrets never reach the log (a secret is ek_ and 43 URL-safe characters).
    assert not re.search(r"ek_[A-Za-z0-9_-]{40}", log_path.read_text(errors="replace"))


def test_barge_in_over_webrtc_is_cut_and_truncated_by_the_server(keyed_server, sync_playwright, tmp_path):  # noqa: F811
    """Talking over a reply: the server clears its track and truncates the reply at what was played;
    the page marks it interrupted and sends no truncate of its own; the new turn is answered."""
    server, _ = keyed_server
    wav = tmp_path / "barge-in.wav"
    synthesize_fake_mic(wav, [(3.0, LONG_QUESTION), (6.0, QUESTIONS[1])])
    console: list[str] = []
    result: dict = {}
    try:
        with open_page(sync_playwright, "webrtc-barge-in", wav=wav, console=console) as page:
            page.goto(server.url + "/")
            page.wait_for_function("() => window.__quillman && window.__quillman.prewarm !== null", timeout=60_000)
            page.get_by_role("button", name=re.compile("Start talking")).click()
            page.wait_for_function("() => window.__quillman.state === 'assistantSpeaking'", timeout=120_000)
            page.wait_for_function("() => (window.__quillman.events['output_audio_buffer.cleared'] ?? 0) > 0",
                                   timeout=60_000)
            page.wait_for_function(
                """() => {
                  const q = window.__quillman;
                  return q.turns.length >= 2 && q.turns[q.turns.length - 1].status === 'completed'
                    && q.state === 'listening';
                }""",
                timeout=180_000,
            )
            state = result["final"] = page.evaluate(READ_PAGE)
            turns, events = state["q"]["turns"], state["q"]["events"]
            assert turns[0]["interrupted"], turns[0]
            assert page.locator(".msg-assistant").first.locator(".msg-tag").inner_text() == "interrupted"
            assert events.get("conversation.item.truncated", 0) >= 1, events  # by the server itself
            assert not turns[0].get("truncated")  # the page sent no conversation.item.truncate
            assert _wer(QUESTIONS[1], state["users"][-1]) <= MAX_WER, state["users"]
            assert not state["q"]["errors"], state["q"]["errors"]
            page.screenshot(path=str(ARTIFACTS / "webrtc-barge-in.png"))
    finally:
        _save("webrtc-barge-in", result, console)
