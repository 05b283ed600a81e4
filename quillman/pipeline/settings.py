"""Session settings: one immutable state, changed only by ``apply(session.update)``.

``apply`` validates the whole update before it changes anything (a refused update changes
nothing) and returns a new :class:`SessionSettings`. Settings a client may send that ask for
features this server does not have (MCP tools) are refused with
``unsupported_feature`` instead of being silently ignored; their empty / null values are
accepted, since many clients always send them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import ValidationError

from quillman import errors, protocol
from quillman.audio import G711_RATE_HZ, PCM16
from quillman.config import LlmConfig, SessionConfig, VadConfig
from quillman.engines.llm.base import Capabilities, GenerationParams, Tool, ToolChoice
from quillman.pipeline.mcp_spec import McpServerSpec
from quillman.pipeline.mcp_access import Access
from quillman.pipeline.tools import MAX_TOOLS, choice_wire, mcp_choice, parse_mcp_tools, parse_tool_choice, parse_tools

NO_MCP = Access([])  # the default: MCP tools refused (mcp_disabled)


@dataclass(frozen=True)
class SessionSettings:
    instructions: str
    voice: str
    voices: tuple[str, ...]
    input_rate_hz: int
    output_rate_hz: int
    turn_detection: VadConfig | None  # None: the client commits
    output_modalities: tuple[str, ...] = ("audio",)
    max_output_tokens: int | None = None  # None: the server's llm.max_tokens
    language: str | None = None
    create_response: bool = True
    interrupt_response: bool = True
    sequential: bool = False  # quillman.pipeline = "sequential": the naive baseline
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    mcp: tuple[McpServerSpec, ...] = ()  # MCP tools: the servers, in the order of session.tools
    input_format: str = PCM16  # the wire format of appends / output deltas
    output_format: str = PCM16
    noise_reduction: str | None = None  # "near_field" | "far_field": denoise the input
    transcription_only: bool = False  # session.type "transcription": no responses
    partial_transcripts: bool = False  # input_audio_transcription.delta while the user speaks

    @classmethod
    def initial(cls, config: SessionConfig, vad: VadConfig, voices: list[str]) -> "SessionSettings":
        return cls(instructions=config.instructions, voice=config.voice, voices=tuple(voices or [config.voice]),
                   input_rate_hz=config.sample_rate_hz, output_rate_hz=config.sample_rate_hz,
                   turn_detection=vad, partial_transcripts=config.partial_transcripts)

    def apply(self, update: protocol.SessionUpdate, default_voice: str, access: Access = NO_MCP) -> "SessionSettings":
        audio = update.audio
        audio_in = audio.input if audio else None
        audio_out = audio.output if audio else None
        in_format = audio_in.format if audio_in else None
        out_format = audio_out.format if audio_out else None
        for name, fmt in (("audio.input.format", in_format), ("audio.output.format", out_format)):
            if fmt is not None and fmt.type == PCM16 and fmt.rate not in protocol.SUPPORTED_RATES_HZ:
                raise errors.UnsupportedAudioFormat(
                    f"{name} {fmt.type} at {fmt.rate} Hz is not supported; use audio/pcm (pcm16 mono) "
                    f"at one of {', '.join(map(str, protocol.SUPPORTED_RATES_HZ))} Hz, "
                    "or audio/pcmu / audio/pcma (8 kHz)", param=name)
        changes: dict = {}
        if update.tools is not None or update.tool_choice is not None:
            tools = parse_tools(update.tools, "session") if update.tools is not None else self.tools
            servers = parse_mcp_tools(update.tools, "session", access) if update.tools is not None else self.mcp
            _check_together(tools, servers, "session.tools")
            changes["tools"] = tools
            changes["mcp"] = servers
            labels = tuple(spec.label for spec in servers)
            changes["tool_choice"] = (parse_tool_choice(update.tool_choice, tools, "session", labels)
                                      if update.tool_choice is not None
                                      else kept_choice(self.tool_choice, tools, labels))
        if audio_in is not None and "noise_reduction" in audio_in.model_fields_set:
            reduction = audio_in.noise_reduction
            changes["noise_reduction"] = reduction.type if reduction is not None else None
        if update.type is not None:
            changes["transcription_only"] = update.type == "transcription"
        if update.include is not None:
            changes["partial_transcripts"] = protocol.INCLUDE_PARTIAL_TRANSCRIPTS in update.include
        if audio_in is not None and "turn_detection" in audio_in.model_fields_set:
            changes.update(self._turn_detection(audio_in.turn_detection))
        if update.quillman is not None and update.quillman.pipeline is not None:
            changes["sequential"] = update.quillman.pipeline == "sequential"
        if update.instructions is not None:
            changes["instructions"] = update.instructions
        if update.output_modalities:
            changes["output_modalities"] = tuple(update.output_modalities)
        if update.max_output_tokens is not None:
            changes["max_output_tokens"] = None if update.max_output_tokens == "inf" else int(update.max_output_tokens)
        voice = audio_out.voice if audio_out else None
        voice = voice.get("id") if isinstance(voice, dict) else voice
        if voice:
            # Unknown names (OpenAI's "alloy", ...) keep working with the default voice.
            changes["voice"] = voice if voice in self.voices else default_voice
        if out_format is not None:
            changes["output_format"] = out_format.type
            changes["output_rate_hz"] = _wire_rate(out_format)
        if in_format is not None:
            changes["input_format"] = in_format.type
            changes["input_rate_hz"] = _wire_rate(in_format)
        if audio_in is not None and audio_in.transcription is not None and audio_in.transcription.language:
            changes["language"] = audio_in.transcription.language
        return replace(self, **changes)

    def _turn_detection(self, td: protocol.TurnDetection | None) -> dict:
        if td is None:
            return {"turn_detection": None}
        base = self.turn_detection or VadConfig()
        given = {key: getattr(td, key) for key in ("threshold", "prefix_padding_ms", "silence_duration_ms")
                 if getattr(td, key) is not None}
        given["type"] = td.type
        if td.type == "semantic_vad":  # its end of turn is the judgment, not a silence
            given = {"type": td.type, "eagerness": td.eagerness or "auto"}
        values = {**base.model_dump(), **given}
        # A pause (segment + speculation) never outlasts the end of turn.
        values["pause_ms"] = min(values["pause_ms"], values["silence_duration_ms"])
        try:  # validated again as the operator's config: no update bypasses a bound
            options = VadConfig.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "session.audio.input.turn_detection." + ".".join(map(str, first["loc"]))
            raise errors.InvalidEvent(f"invalid 'session.update': {where.rstrip('.')}: {first['msg']}",
                                      param=where.rstrip(".")) from None
        return {"turn_detection": options, "create_response": td.create_response,
                "interrupt_response": td.interrupt_response}

    @property
    def wants_partials(self) -> bool:
        return self.transcription_only or self.partial_transcripts

    @property
    def responds(self) -> bool:
        """Whether a committed turn starts a response (never in a transcription session)."""
        return self.create_response and not self.transcription_only

    def session_object(self, session_id: str) -> protocol.SessionObject | protocol.TranscriptionSessionObject:
        vad = self.turn_detection
        turn_detection: protocol.SemanticTurnDetection | protocol.ServerTurnDetection | None = None
        if vad is not None and vad.type == "semantic_vad":
            turn_detection = protocol.SemanticTurnDetection(
                eagerness=vad.eagerness, create_response=self.create_response,
                interrupt_response=self.interrupt_response)
        elif vad is not None:
            turn_detection = protocol.ServerTurnDetection(
                threshold=vad.threshold, prefix_padding_ms=vad.prefix_padding_ms,
                silence_duration_ms=vad.silence_duration_ms, create_response=self.create_response,
                interrupt_response=self.interrupt_response)
        audio_input = protocol.SessionAudioInput(
            format=protocol.audio_format(self.input_format, self.input_rate_hz),
            transcription=protocol.SessionTranscription(language=self.language),
            turn_detection=turn_detection,
            noise_reduction=protocol.ServerNoiseReduction(type=self.noise_reduction)
            if self.noise_reduction else None)
        include = [protocol.INCLUDE_PARTIAL_TRANSCRIPTS] if self.partial_transcripts else []
        if self.transcription_only:
            return protocol.TranscriptionSessionObject(
                id=session_id, audio=protocol.TranscriptionAudioObject(input=audio_input), include=include)
        return protocol.SessionObject(
            id=session_id, instructions=self.instructions, output_modalities=list(self.output_modalities),
            max_output_tokens=self.max_output_tokens or "inf",
            audio=protocol.SessionAudioObject(
                input=audio_input,
                output=protocol.SessionAudioOutput(
                    format=protocol.audio_format(self.output_format, self.output_rate_hz), voice=self.voice)),
            voices=list(self.voices),
            tools=[*(protocol.FunctionTool(name=t.name, description=t.description, parameters=t.parameters)
                     for t in self.tools), *(spec.wire() for spec in self.mcp)],
            tool_choice=choice_wire(self.tool_choice),
            quillman=protocol.QuillmanSessionInfo(pipeline="sequential" if self.sequential else "streaming"),
            include=include)


def _wire_rate(fmt: protocol.AudioFormat) -> int:
    return fmt.rate if fmt.type == PCM16 else G711_RATE_HZ


def kept_choice(choice: ToolChoice, tools: tuple[Tool, ...], mcp_labels: tuple[str, ...] = ()) -> ToolChoice:
    """A choice made for other tools: kept while it still fits them, else "auto"."""
    picked = mcp_choice(choice)
    if picked is not None:
        return choice if picked[0] in mcp_labels else "auto"
    fits = choice in ("auto", "none") or (bool(tools or mcp_labels) and choice == "required") or (
        choice in {tool.name for tool in tools})
    return choice if fits else "auto"


def _check_together(tools: tuple[Tool, ...], servers: tuple[McpServerSpec, ...], param: str) -> None:
    if len(tools) + len(servers) > MAX_TOOLS:
        raise errors.ToolsTooLarge(f"{len(tools) + len(servers)} tools; at most {MAX_TOOLS} are accepted",
                                   param=param)
    labels = [spec.label for spec in servers]
    if len(set(labels)) != len(labels):
        raise errors.InvalidMcpTool("each MCP tool needs its own server_label", param=param)


@dataclass(frozen=True)
class ResponseSettings:
    """What one response needs: the session's settings of the moment, the client's options for
    this response, and the server's pipeline knobs (``pipeline``) and LLM sampling."""

    instructions: str
    output_audio: bool
    voice: str
    output_rate_hz: int
    max_output_tokens: int
    temperature: float
    top_p: float
    pipeline: SessionConfig
    metadata: dict[str, str] | None = None
    sequential: bool = False  # the naive baseline: whole reply text, then one synthesis
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    mcp: tuple[McpServerSpec, ...] = ()
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    output_format: str = PCM16  # the wire format of the output audio deltas


def generation_params(settings: ResponseSettings) -> GenerationParams:
    """The sampling of a response's generation: its settings', in one place."""
    return GenerationParams(max_tokens=settings.max_output_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, repeat_penalty=settings.repeat_penalty,
                            frequency_penalty=settings.frequency_penalty)


def check_capabilities(function_tools: bool, mcp_tools: bool, tool_choice: ToolChoice,
                       capabilities: Capabilities, param: str) -> None:
    """Refuse what the engine cannot do (it would be dropped): asked of the engine, not of
    the backend's name. MCP tools go through the same function-calling path."""
    if (function_tools or mcp_tools) and tool_choice != "none" and not capabilities.tools:
        what = "MCP tools" if mcp_tools and not function_tools else "function calling"
        raise errors.UnsupportedFeature(f"{what} is not supported by this server's language model "
                                        "engine (llm.backend / llm.scheduler)", param=param)


def response_settings(settings: SessionSettings, options: protocol.ResponseOptions | None,
                      pipeline: SessionConfig, llm: LlmConfig, capabilities: Capabilities,
                      access: Access = NO_MCP) -> ResponseSettings:
    options = options or protocol.ResponseOptions()
    tools = parse_tools(options.tools, "response") if options.tools is not None else settings.tools
    servers = parse_mcp_tools(options.tools, "response", access) if options.tools is not None else settings.mcp
    _check_together(tools, servers, "response.tools")
    labels = tuple(spec.label for spec in servers)
    if options.tool_choice is not None:
        tool_choice = parse_tool_choice(options.tool_choice, tools, "response", labels)
    else:
        tool_choice = kept_choice(settings.tool_choice, tools, labels)
    check_capabilities(bool(tools), bool(servers), tool_choice, capabilities, "response.tools")
    modalities = options.output_modalities or settings.output_modalities
    voice = settings.voice
    requested = options.audio.output.voice if options.audio and options.audio.output else None
    if isinstance(requested, str) and requested in settings.voices:
        voice = requested
    requested_tokens = options.max_output_tokens if options.max_output_tokens != "inf" else None
    max_tokens = requested_tokens or settings.max_output_tokens or llm.max_tokens
    return ResponseSettings(
        instructions=options.instructions or settings.instructions,
        output_audio="audio" in modalities,
        voice=voice,
        output_rate_hz=settings.output_rate_hz,
        # The server's llm.max_tokens is a ceiling: a client may ask for less, never more.
        max_output_tokens=min(int(max_tokens), llm.max_tokens),
        temperature=llm.temperature,
        top_p=llm.top_p,
        pipeline=pipeline,
        metadata=options.metadata,
        sequential=settings.sequential,
        tools=tools,
        tool_choice=tool_choice,
        mcp=servers,
        repeat_penalty=llm.repeat_penalty,
        frequency_penalty=llm.frequency_penalty,
        output_format=settings.output_format,
    )
