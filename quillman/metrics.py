"""Prometheus metrics of conversations, through ``ray.serve.metrics``.

The session reports to a :class:`SessionMetrics`; in the ingress that is :class:`ServeMetrics`
(exported by Ray's metrics agent with the replica's tags); the base class records nothing.
All names start with ``quillman_``; Ray prefixes ``ray_`` on export.
"""

from __future__ import annotations

import time

from quillman.protocol import STAGES  # one definition: response.done, metrics, bench

# Voice-to-voice latencies and stages are hundreds of ms to seconds.
GAUGE_REFRESH_S = 5.0
LATENCY_BUCKETS_MS = [50, 100, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000, 30000]


class SessionMetrics:
    """What a session reports. This base records nothing (unit tests, tools)."""

    def session_opened(self) -> None: ...
    def session_closed(self) -> None: ...
    def turn_committed(self) -> None: ...
    def response_done(self, status: str, timings: dict[str, float], spoken: bool) -> None: ...
    def error(self, code: str) -> None: ...
    def audio_in(self, seconds: float) -> None: ...
    def audio_out(self, seconds: float) -> None: ...
    def refresh(self) -> None: ...


class ServeMetrics(SessionMetrics):
    """One instance per ingress replica; shared by all its sessions."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._sessions_active = metrics.Gauge(
            "quillman_sessions_active", description="Open Realtime sessions on this replica.")
        self._sessions = metrics.Counter(
            "quillman_sessions_total", description="Realtime sessions opened.")
        self._turns = metrics.Counter(
            "quillman_turns_total", description="User turns committed (spoken or text).")
        self._responses = metrics.Counter(
            "quillman_responses_total", description="Responses ended, by status.", tag_keys=("status",))
        self._cancellations = metrics.Counter(
            "quillman_cancellations_total", description="Responses cancelled (barge-in or client).")
        self._errors = metrics.Counter(
            "quillman_errors_total", description="error events sent, by code.", tag_keys=("code",))
        self._audio_in = metrics.Counter(
            "quillman_audio_in_seconds_total", description="Seconds of user audio received.")
        self._audio_out = metrics.Counter(
            "quillman_audio_out_seconds_total", description="Seconds of reply audio sent.")
        self._voice_to_voice = metrics.Histogram(
            "quillman_voice_to_voice_ms",
            description="End of user speech to first reply audio sent (server side), ms.",
            boundaries=LATENCY_BUCKETS_MS)
        self._stage = metrics.Histogram(
            "quillman_stage_ms", description="Per-stage time of completed responses, ms.",
            boundaries=LATENCY_BUCKETS_MS, tag_keys=("stage",))
        self._active = 0
        self._refreshed = 0.0

    def session_opened(self) -> None:
        self._active += 1
        self._sessions.inc()
        self._sessions_active.set(self._active)

    def session_closed(self) -> None:
        self._active = max(0, self._active - 1)
        self._sessions_active.set(self._active)

    def turn_committed(self) -> None:
        self._turns.inc()

    def response_done(self, status: str, timings: dict[str, float], spoken: bool) -> None:
        self._responses.inc(tags={"status": status})
        if status == "cancelled":
            self._cancellations.inc()
        if status != "completed":
            return
        if spoken and "first_audio_ms" in timings:
            self._voice_to_voice.observe(timings["first_audio_ms"])
        for stage in STAGES:
            if stage in timings:
                self._stage.observe(timings[stage], tags={"stage": stage})

    def error(self, code: str) -> None:
        self._errors.inc(tags={"code": code})

    def audio_in(self, seconds: float) -> None:
        self._audio_in.inc(seconds)
        self.refresh()

    def refresh(self) -> None:
        """Re-set the gauge now and then: Ray drops a gauge not set for ~20 s."""
        now = time.monotonic()
        if now - self._refreshed > GAUGE_REFRESH_S:
            self._refreshed = now
            self._sessions_active.set(self._active)

    def audio_out(self, seconds: float) -> None:
        if seconds > 0:  # Ray's counters refuse 0 (a text reply, a reply that is only a call)
            self._audio_out.inc(seconds)
