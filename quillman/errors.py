"""Typed errors with stable codes; each becomes one ``error`` event on the socket.

Codes follow the OpenAI Realtime API where it has one, so existing clients recognise them.
"""

from __future__ import annotations


class QuillmanError(Exception):
    code = "server_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, event_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.event_id = event_id


class InvalidRequest(QuillmanError):
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidJson(InvalidRequest):
    code = "invalid_json"


class UnknownEventType(InvalidRequest):
    code = "unknown_event_type"


class InvalidEvent(InvalidRequest):
    code = "invalid_event"


class UnsupportedEvent(InvalidRequest):
    code = "unsupported_event"


class InvalidBase64(InvalidRequest):
    code = "invalid_base64"


class InvalidAudioLength(InvalidRequest):
    code = "invalid_audio_length"


class UnsupportedAudioFormat(InvalidRequest):
    code = "unsupported_audio_format"


class FrameTooLarge(InvalidRequest):
    code = "frame_too_large"


class AudioBufferOverflow(InvalidRequest):
    """Audio arrives faster than real time beyond the allowed lead."""

    code = "input_audio_buffer_overflow"


class AudioBufferFull(InvalidRequest):
    """Without server VAD, uncommitted audio beyond ``max_turn_s`` is refused."""

    code = "input_audio_buffer_full"


class RateLimited(InvalidRequest):
    code = "rate_limit_exceeded"


class IdleTimeout(InvalidRequest):
    code = "idle_timeout"


class CommitEmpty(InvalidRequest):
    code = "input_audio_buffer_commit_empty"


class InputTooLong(InvalidRequest):
    """Text that could never fit the model's context (an item, the instructions)."""

    code = "input_too_long"


class UnsupportedFeature(InvalidRequest):
    """A valid Realtime setting this server does not implement (yet): refused, not ignored."""

    code = "unsupported_feature"


class InvalidTool(InvalidRequest):
    """A tool definition that cannot be used: not a function, a bad name, a malformed schema."""

    code = "invalid_tool"


class ToolsTooLarge(InvalidRequest):
    code = "tools_too_large"


class InvalidToolChoice(InvalidRequest):
    code = "invalid_tool_choice"


class UnknownCallId(InvalidRequest):
    """A ``function_call_output`` for a call the model never made (or already answered)."""

    code = "unknown_call_id"


class FunctionCallCancelled(InvalidRequest):
    """A ``function_call_output`` for a call of a response that was cancelled."""

    code = "function_call_cancelled"


class UnknownItemId(InvalidRequest):
    """An item id that is not in the conversation (never was, deleted, or cut from the history);
    the codes are the OpenAI Realtime API's, one per event."""


class ItemCreateInvalidPreviousItemId(UnknownItemId):
    code = "item_create_invalid_previous_item_id"


class ItemDeleteInvalidItemId(UnknownItemId):
    code = "item_delete_invalid_item_id"


class ItemRetrieveInvalidItemId(UnknownItemId):
    code = "item_retrieve_invalid_item_id"


class ItemTruncateInvalidItemId(UnknownItemId):
    code = "item_truncate_invalid_item_id"


class McpDisabled(UnsupportedFeature):
    """An MCP tool on a server whose operator allowed no MCP server (``mcp.allowed_servers``)."""

    code = "mcp_disabled"


class McpServerNotAllowed(InvalidRequest):
    """A ``server_url`` outside the operator's allowlist (also after a redirect)."""

    code = "mcp_server_not_allowed"


class McpPrivateAddress(McpServerNotAllowed):
    """A ``server_url`` that is, or resolves to, a private / loopback / link-local address
    the allowlist does not name."""

    code = "mcp_server_private_address"


class InvalidMcpTool(InvalidTool):
    """An MCP tool definition that cannot be used (label, URL, filters)."""

    code = "invalid_mcp_tool"


class McpListToolsFailed(QuillmanError):
    """Connecting to an MCP server or listing its tools failed (``mcp_list_tools.failed``)."""

    code = "mcp_list_tools_failed"
    type = "server_error"


class UnknownApprovalRequest(InvalidRequest):
    """An ``mcp_approval_response`` for no pending ``mcp_approval_request``."""

    code = "unknown_approval_request"


class ResponseAlreadyActive(InvalidRequest):
    code = "conversation_already_has_active_response"


class ResponseCancelNotActive(InvalidRequest):
    code = "response_cancel_not_active"


class HandshakeRefused(QuillmanError):
    """A websocket turned away before it is accepted (no session starts).

    Sent as an HTTP answer to the upgrade request (``http_status`` and a JSON ``error`` body)
    where the server supports it (Ray's proxy does), else as a close before accept.
    """

    type = "invalid_request_error"
    http_status = 403
    close_code = 1008  # policy violation


class InvalidApiKey(HandshakeRefused):
    code = "invalid_api_key"
    http_status = 401


class OriginNotAllowed(HandshakeRefused):
    code = "origin_not_allowed"


class TwilioDisabled(HandshakeRefused):
    """API keys are set but no Twilio auth token: /twilio/* would be an open door."""

    code = "twilio_disabled"


class InvalidTwilioSignature(HandshakeRefused):
    code = "invalid_twilio_signature"


class InvalidClientSecret(HandshakeRefused):
    """An ``ek_`` secret this server never issued (or forgot: past its expiry for long)."""

    code = "invalid_client_secret"
    http_status = 401


class ClientSecretExpired(HandshakeRefused):
    code = "client_secret_expired"
    http_status = 401


class ClientSecretAlreadyUsed(HandshakeRefused):
    """Client secrets open one call or one websocket, once."""

    code = "client_secret_already_used"
    http_status = 401


class ClientSecretNotAllowed(HandshakeRefused):
    """A client secret where only a real API key may go (minting secrets, the sideband)."""

    code = "client_secret_not_allowed"
    http_status = 401


class InvalidSdp(HandshakeRefused):
    """A WebRTC offer that is missing, not SDP, or one the stack cannot negotiate."""

    code = "invalid_sdp"
    http_status = 400


class OfferWithoutAudio(InvalidSdp):
    code = "offer_without_audio"


class InvalidCallRequest(HandshakeRefused):
    """A ``POST /v1/realtime/calls`` or ``client_secrets`` body that is not what the API takes
    (its ``session`` refused by ``session.update``'s rules keeps that error's code)."""

    code = "invalid_request"
    http_status = 400


class CallNotFound(HandshakeRefused):
    """A sideband socket or hang-up for a call this replica does not hold."""

    code = "call_not_found"
    http_status = 404


class WebRtcDisabled(HandshakeRefused):
    code = "webrtc_disabled"
    http_status = 404


class ClientSecretsExhausted(HandshakeRefused):
    code = "client_secrets_exhausted"
    type = "server_error"
    http_status = 503


class ServerAtCapacity(HandshakeRefused):
    """Every session slot of the replica is taken: refused at once, never queued."""

    code = "server_at_capacity"
    type = "server_error"
    http_status = 503
    close_code = 1013  # try again later


class ModelError(QuillmanError):
    """A model failed or timed out during a turn: the response ends ``failed``."""

    code = "model_error"
    type = "server_error"


class ModelUnavailable(ModelError):
    """The replica working on a turn was lost (it crashed, or its node went away), or its stage
    has no running replica while the turn waits on it: the turn ends ``failed`` at once instead
    of waiting for a replacement; the session goes on, and its next turn is answered once Serve
    has started one (``GET /healthz``)."""

    code = "model_unavailable"


class TranscriptionFailed(ModelError):
    """ASR of a user turn failed: reported once, as ``input_audio_transcription.failed``."""


class InternalError(QuillmanError):
    """Anything unexpected while handling a client frame: the session goes on."""

    code = "server_error"
    type = "server_error"


class ClientTooSlow(QuillmanError):
    """The client stopped reading: the outgoing queue passed its bound (fatal, close 1011)."""

    code = "client_too_slow"
    type = "server_error"


class ConfigError(ValueError):
    """A setting cannot work (missing model, impossible split); the message names the setting."""


class StartupTimeoutError(TimeoutError):
    """A model deployment did not load and warm up its engine within ``startup_timeout_s``.

    Raised by the replica's constructor: Serve records the message (the deployment, the phase,
    the timeout and the setting to raise) and ``/healthz`` shows it.
    """
