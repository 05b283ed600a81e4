"""QuiLLMan on Ray Serve: streaming voice chat (Whisper -> LLM -> TTS) as a Serve application graph."""

__version__ = "0.1.0"
