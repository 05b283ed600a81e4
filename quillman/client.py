"""A small Realtime client: speaks recorded audio at live pace and collects the reply.

Used by ``quillman talk`` / ``say`` / ``bench`` and by the end-to-end tests. It measures
voice-to-voice latency the way a user feels it: from the moment the client sent the last
speech sample (located through the server's ``speech_stopped.audio_end_ms``) to the moment the
first reply audio arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import numpy as np
import websockets

from quillman.audio import G711_RATE_HZ, PCM16, decode_audio_base64, encode_audio_base64, resample

DEFAULT_URL = "ws://127.0.0.1:8000/v1/realtime"
SERVER_VAD = {"type": "server_vad"}
TRANSCRIPT_GRACE_S = 5.0  # how long after response.done a committed turn's transcript is awaited


@dataclass
class TurnResult:
    status: str = "none"
    user_transcript: str | None = None
    reply_text: str = ""
    reply_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    sample_rate_hz: int = 24000
    timings: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None  # client-side voice-to-voice
    errors: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def reply_audio_s(self) -> float:
        return len(self.reply_audio) / self.sample_rate_hz

    @property
    def underrun_s(self) -> float:
        """How far the reply's playback starved: the most the wall clock since the first audio
        delta ran ahead of the audio received before each later delta (0: never under-ran).
        A player that starts at the first delta falls silent for this long in total at worst."""
        deltas = [e for e in self.events if "_samples" in e]  # audio deltas, as collect_turn counted them
        if not deltas:
            return 0.0
        start = deltas[0]["_received"]
        received_s, worst = 0.0, 0.0
        for event in deltas:
            worst = max(worst, (event["_received"] - start) - received_s)
            received_s += event["_samples"] / self.sample_rate_hz
        return round(worst, 3)


def wire_format(audio_format: str, rate: int) -> dict[str, Any]:
    """A session's ``audio.*.format``: pcm16 names its rate, G.711 is always 8 kHz."""
    return {"type": audio_format, "rate": rate} if audio_format == PCM16 else {"type": audio_format}


class RealtimeClient:
    def __init__(self, url: str = DEFAULT_URL, sample_rate_hz: int = 24000, chunk_ms: int = 20,
                 api_key: str | None = None, audio_format: str = PCM16,
                 turn_detection: dict[str, Any] | None = SERVER_VAD):
        """``turn_detection``: what the session is switched to on connect; None keeps the
        server's default (what a client that does not choose gets)."""
        self.url = url
        self.turn_detection = turn_detection
        self.api_key = api_key if api_key is not None else os.environ.get("QUILLMAN_API_KEY")
        self.format = audio_format  # audio/pcm, audio/pcmu or audio/pcma, both ways
        self.rate = sample_rate_hz if audio_format == PCM16 else G711_RATE_HZ
        self.chunk_ms = chunk_ms
        self.ws: Any = None
        self.session: dict[str, Any] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._audio_sent_samples = 0
        self._send_log: list[tuple[int, float]] = []  # (end sample, perf_counter when sent)

    async def __aenter__(self) -> "RealtimeClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self, session: dict[str, Any] | None = None, retry_refused_s: float = 0.0) -> None:
        """Open the session; ``retry_refused_s``: for that long, a server at capacity (503) is
        asked again after the ``Retry-After`` it sends (capped at 1 s here)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        give_up = time.perf_counter() + retry_refused_s
        while True:
            try:
                self.ws = await websockets.connect(self.url, max_size=None, open_timeout=30,
                                                   additional_headers=headers)
                break
            except websockets.exceptions.InvalidStatus as exc:
                response = exc.response
                if response.status_code != 503 or time.perf_counter() >= give_up:
                    raise
                await asyncio.sleep(min(1.0, float(response.headers.get("Retry-After", 1))))
        self._reader = asyncio.create_task(self._read())
        created = await self.wait_for("session.created", timeout=30)
        self.session = created["session"]
        audio_in: dict[str, Any] = {"format": wire_format(self.format, self.rate)}
        if self.turn_detection is not None:
            audio_in["turn_detection"] = self.turn_detection
        update = {"type": "realtime", "audio": {
            "input": audio_in, "output": {"format": wire_format(self.format, self.rate)}}}
        if session:
            update.update(session)
        await self.send({"type": "session.update", "session": update})
        self.session = (await self.wait_for("session.updated", timeout=30))["session"]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for message in self.ws:
            event = json.loads(message)
            event["_received"] = time.perf_counter()
            self._events.put_nowait(event)

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next_event(self, timeout: float = 60) -> dict[str, Any]:
        return await asyncio.wait_for(self._events.get(), timeout)

    async def wait_for(self, event_type: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout
        while True:
            event = await self.next_event(max(0.01, deadline - time.perf_counter()))
            if event["type"] == event_type:
                return event
            if event["type"] == "error":
                raise RuntimeError(f"server error: {event['error']}")

    async def send_audio(self, pcm: np.ndarray) -> None:
        """Send int16 pcm at the session rate, one event, and log when its samples left."""
        await self.send({"type": "input_audio_buffer.append", "audio": encode_audio_base64(pcm, self.format)})
        self._audio_sent_samples += len(pcm)
        self._send_log.append((self._audio_sent_samples, time.perf_counter()))

    def _sent_at(self, audio_ms: float) -> float | None:
        sample = int(audio_ms * self.rate / 1000)
        for end, sent in self._send_log:
            if end >= sample:
                return sent
        return None

    async def stream_audio(self, pcm: np.ndarray, stop: asyncio.Event | None = None,
                           pad_silence_s: float = 0.0, realtime: bool = True) -> None:
        """Stream pcm at live pace in chunk_ms frames; then silence until ``stop`` is set."""
        chunk = self.rate * self.chunk_ms // 1000
        silence = np.zeros(chunk, dtype=np.int16)
        start = time.perf_counter()
        sent_s = 0.0

        async def pace() -> None:
            if realtime:
                delay = start + sent_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)

        for i in range(0, len(pcm), chunk):
            await self.send_audio(pcm[i:i + chunk])
            sent_s += self.chunk_ms / 1000
            await pace()
        padded = 0.0
        while (stop is None and padded < pad_silence_s) or (stop is not None and not stop.is_set()):
            await self.send_audio(silence)
            sent_s += self.chunk_ms / 1000
            padded += self.chunk_ms / 1000
            await pace()
            if stop is not None and padded > 120:
                break

    async def talk(self, pcm: np.ndarray, sample_rate_hz: int, timeout: float = 120) -> TurnResult:
        """One spoken turn: stream the clip (then silence, as a live mic does) until response.done."""
        pcm = resample(np.asarray(pcm, dtype=np.int16), sample_rate_hz, self.rate)
        done = asyncio.Event()
        sender = asyncio.create_task(self.stream_audio(pcm, stop=done))
        try:
            return await self.collect_turn(timeout=timeout)
        finally:
            done.set()
            await asyncio.gather(sender, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def talking_over(self, question: np.ndarray, interruption: np.ndarray,
                           while_replying: Callable[[], Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Speak ``question`` (pcm at the session's rate), and when its reply's first audio
        arrives (``while_replying()`` is called then) talk over it with ``interruption``; yields
        the interrupted response (its ``response.done``). The interruption streams on (then
        silence, as a live mic) inside the block, where its own turn can be collected."""
        done, interrupt = asyncio.Event(), asyncio.Event()
        senders = [asyncio.create_task(self.stream_audio(question, stop=done))]
        try:
            while (await self.next_event())["type"] != "response.output_audio.delta":
                pass
            done.set()
            await senders[0]
            if while_replying is not None:
                while_replying()
            senders.append(asyncio.create_task(self.stream_audio(interruption, stop=interrupt)))
            while (event := await self.next_event())["type"] != "response.done":
                pass
            yield event["response"]
        finally:
            done.set()
            interrupt.set()
            await asyncio.gather(*senders, return_exceptions=True)

    async def ask(self, text: str) -> None:
        """Send a user text item and ask for a reply (``collect_turn`` reads it)."""
        await self.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
        await self.send({"type": "response.create"})

    async def say(self, text: str, timeout: float = 120) -> TurnResult:
        sent = time.perf_counter()
        await self.ask(text)
        result = await self.collect_turn(timeout=timeout)
        result.user_transcript = text
        first_audio = next((e["_received"] for e in result.events
                            if e["type"] == "response.output_audio.delta"), None)
        result.latency_ms = None if first_audio is None else round((first_audio - sent) * 1000, 1)
        return result

    async def answer_calls(self, result: TurnResult, run_tool, timeout: float = 120) -> TurnResult:
        """Run the calls the model made in ``result`` (``run_tool(name, arguments) -> output``),
        send their outputs and collect the reply that uses them; repeated while it calls."""
        for _ in range(4):  # a model that keeps calling is stopped here
            calls = [item for item in result.response.get("output", []) if item.get("type") == "function_call"]
            if not calls or result.status != "completed":
                return result
            for call in calls:
                await self.send({"type": "conversation.item.create", "item": {
                    "type": "function_call_output", "call_id": call["call_id"],
                    "output": run_tool(call["name"], call["arguments"])}})
            await self.send({"type": "response.create"})
            following = await self.collect_turn(timeout=timeout)
            following.user_transcript = result.user_transcript
            following.errors = result.errors + following.errors
            result = following
        return result

    async def collect_turn(self, timeout: float = 120) -> TurnResult:
        """Collect events until ``response.done``; the result holds transcript, reply and timings."""
        result = TurnResult(sample_rate_hz=self.rate)
        audio: list[np.ndarray] = []
        speech_end_sent: float | None = None
        first_audio: float | None = None
        deadline = time.perf_counter() + timeout
        while True:
            event = await self.next_event(max(0.01, deadline - time.perf_counter()))
            result.events.append(event)
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped":
                speech_end_sent = self._sent_at(event["audio_end_ms"])
            elif kind == "conversation.item.input_audio_transcription.completed":
                result.user_transcript = event["transcript"]
            elif kind == "response.output_audio_transcript.delta" or kind == "response.output_text.delta":
                result.reply_text += event["delta"]
            elif kind == "response.output_audio.delta":
                if first_audio is None:
                    first_audio = event["_received"]
                audio.append(decode_audio_base64(event["delta"], self.format))
                event["_samples"] = len(audio[-1])  # for underrun_s
            elif kind == "error":
                result.errors.append(event["error"])
            elif kind == "response.done":
                result.response = event["response"]
                result.status = event["response"]["status"]
                result.timings = event["response"].get("timings", {})
                break
        if audio:
            result.reply_audio = np.concatenate(audio)
        if speech_end_sent is not None and first_audio is not None:
            result.latency_ms = round((first_audio - speech_end_sent) * 1000, 1)
        # The protocol does not order the user's transcription before the reply's response.done
        # (a short reply on a busy machine can finish first): a committed turn's transcript is
        # awaited a little longer, its failure ends the wait.
        committed = any(e["type"] == "input_audio_buffer.committed" for e in result.events)
        settle_by = time.perf_counter() + (TRANSCRIPT_GRACE_S if committed else 0.0)
        while result.user_transcript is None and (committed or not self._events.empty()):
            try:
                event = await self.next_event(max(0.01, settle_by - time.perf_counter()))
            except asyncio.TimeoutError:
                break
            result.events.append(event)
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                result.user_transcript = event["transcript"]
            elif event["type"] == "conversation.item.input_audio_transcription.failed":
                break
        return result


@dataclass
class TranscribedTurn:
    item_id: str
    deltas: list[str] = field(default_factory=list)  # the stable text as it streamed
    transcript: str | None = None  # ``...completed``
    usage_s: float | None = None
    committed_at: int = 0  # index in the session's events


def transcription_session(audio_format: str = PCM16, rate: int = 24000, language: str | None = "en",
                          noise_reduction: str | None = None) -> dict[str, Any]:
    """``session.update``'s session for a live-transcription session (no replies)."""
    return {"type": "transcription", "audio": {"input": {
        "format": wire_format(audio_format, rate if audio_format == PCM16 else G711_RATE_HZ),
        "transcription": {"model": "whisper", "language": language},
        "turn_detection": {"type": "server_vad"},
        "noise_reduction": {"type": noise_reduction} if noise_reduction else None}}}


async def transcribe_stream(client: RealtimeClient, pcm: np.ndarray, sample_rate_hz: int,
                            on_event=None, realtime: bool = True, timeout: float = 120) -> list[TranscribedTurn]:
    """Stream a clip through a transcription session (``client`` connected with
    :func:`transcription_session`); every turn until the last one is completed.
    ``on_event(kind, turn)``: "delta" / "completed" as they arrive (the CLI prints them)."""
    pcm = resample(np.asarray(pcm, dtype=np.int16), sample_rate_hz, client.rate)
    sent = asyncio.Event()

    async def send() -> None:
        await client.stream_audio(pcm, pad_silence_s=1.5, realtime=realtime)
        # Events are handled in order: once this is answered, every append has been through
        # the VAD, so every turn in the audio has been committed.
        sent.set()
        await client.send({"type": "session.update", "session": {}})

    sender = asyncio.create_task(send())
    turns: dict[str, TranscribedTurn] = {}
    deadline = time.perf_counter() + timeout
    index = 0
    synced = False
    try:
        while not (synced and all(t.transcript is not None for t in turns.values())):
            try:
                event = await client.next_event(min(0.2, max(0.01, deadline - time.perf_counter())))
            except asyncio.TimeoutError:
                if time.perf_counter() > deadline:
                    raise
                continue
            index += 1
            kind, item_id = event["type"], event.get("item_id")
            if kind == "session.updated" and sent.is_set():
                synced = True
            elif kind == "input_audio_buffer.committed":
                turns.setdefault(item_id, TranscribedTurn(item_id, committed_at=index))
            elif kind == "conversation.item.input_audio_transcription.delta":
                turn = turns.setdefault(item_id, TranscribedTurn(item_id))
                turn.deltas.append(event["delta"])
                if on_event:
                    on_event("delta", turn)
            elif kind == "conversation.item.input_audio_transcription.completed":
                turn = turns.setdefault(item_id, TranscribedTurn(item_id))
                turn.transcript = event["transcript"]
                turn.usage_s = (event.get("usage") or {}).get("seconds")
                if on_event:
                    on_event("completed", turn)
            elif kind == "error":
                raise RuntimeError(f"server error: {event['error']}")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return list(turns.values())
