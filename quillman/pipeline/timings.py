"""The instants of one response (end of speech, first token, first audio, ...) and their wire form."""

from __future__ import annotations

from dataclasses import dataclass

from quillman import protocol


@dataclass
class Timings:
    """Instants (perf_counter seconds) of one response; reported relative to ``origin``."""

    origin: float  # end of user speech (voice turn) or response.create (text turn)
    turn_detected: float | None = None
    turn_decision: float | None = None  # when the turn detector decided the user had finished
    transcript: float | None = None
    first_token: float | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    done: float | None = None
    asr_last_segment_ms: float | None = None
    llm_started: float | None = None
    first_sentence_tts_started: float | None = None
    llm_queue_ms: float | None = None
    tts_queue_ms: float | None = None
    mcp_call_ms: float | None = None  # MCP tool calls' round trips through the SDK, summed
    speculative: bool = False

    def as_wire(self) -> protocol.ResponseTimings:
        def rel(instant: float | None) -> float | None:
            return None if instant is None else round((instant - self.origin) * 1000, 1)

        def between(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else round((end - start) * 1000, 1)

        return protocol.ResponseTimings(
            turn_detected_ms=rel(self.turn_detected), turn_decision_ms=rel(self.turn_decision),
            transcript_ms=rel(self.transcript),
            first_token_ms=rel(self.first_token), first_sentence_ms=rel(self.first_sentence),
            first_audio_ms=rel(self.first_audio), total_ms=rel(self.done),
            asr_last_segment_ms=self.asr_last_segment_ms,
            llm_ttft_ms=between(self.llm_started, self.first_token),
            tts_first_chunk_ms=between(self.first_sentence_tts_started, self.first_audio),
            llm_queue_ms=self.llm_queue_ms, tts_queue_ms=self.tts_queue_ms,
            mcp_call_ms=None if self.mcp_call_ms is None else round(self.mcp_call_ms, 1),
            speculative=1.0 if self.speculative else 0.0,
        )

    def as_ms(self) -> dict[str, float]:
        """The measured stages (``protocol.STAGES``) and ``speculative``, in ms."""
        return self.as_wire().measured()
