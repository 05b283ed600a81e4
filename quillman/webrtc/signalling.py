"""The body of ``POST /v1/realtime/calls``: the SDP offer and an optional session config.

As the GA API (and the openai SDK's ``realtime.calls.create``) sends it: either the raw offer
with ``Content-Type: application/sdp``, or ``multipart/form-data`` with a part ``sdp`` (the
offer) and an optional part ``session`` (JSON: the session object ``session.update`` takes).
The answer is ``201`` with the SDP answer (``application/sdp``) and ``Location:
/v1/realtime/calls/<call_id>``. Checked here before any peer connection exists: the offer is
SDP and offers audio; the rest (codecs, DTLS) is the WebRTC stack's to refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from quillman import errors

MAX_SDP_BYTES = 64 * 1024  # a browser's offer is 3-6 kB
SDP_TYPE = "application/sdp"
CALLS_PATH = "/v1/realtime/calls"


@dataclass(frozen=True)
class Offer:
    sdp: str
    session: dict[str, Any] | None  # the ``session`` part, not yet validated
    has_data_channel: bool


def check_offer(sdp: str) -> Offer:
    """The offer, or :class:`~quillman.errors.InvalidSdp` / ``OfferWithoutAudio``."""
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise errors.InvalidSdp(f"the SDP offer is larger than {MAX_SDP_BYTES} bytes")
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0" or not any(line.startswith("o=") for line in lines):
        raise errors.InvalidSdp("the body is not an SDP offer (it must start with 'v=0' and have an 'o=' line)")
    media = [line.split()[0][2:] for line in lines if line.startswith("m=")]
    if "audio" not in media:
        raise errors.OfferWithoutAudio("the offer has no audio media section (m=audio): add an audio transceiver")
    return Offer(sdp=sdp if sdp.endswith("\n") else sdp + "\r\n", session=None,
                 has_data_channel="application" in media)


def parse_session(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None or raw == "" or raw == b"":
        return None
    try:
        session = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidCallRequest("the 'session' part is not JSON") from None
    if not isinstance(session, dict):
        raise errors.InvalidCallRequest("the 'session' part must be a JSON object (a session config)")
    return session


async def read_offer(request) -> Offer:
    """The offer of a Starlette request: raw SDP or multipart (``sdp``, ``session``)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == SDP_TYPE:
        body = await request.body()
        try:
            return check_offer(body.decode())
        except UnicodeDecodeError:
            raise errors.InvalidSdp("the SDP offer is not UTF-8 text") from None
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=2, max_fields=4)
        except Exception:  # noqa: BLE001 - Starlette's parse errors vary by version
            raise errors.InvalidCallRequest("the multipart body cannot be read") from None
        try:
            sdp, session = await _part_text(form.get("sdp")), await _part_text(form.get("session"))
        finally:
            await form.close()
        if sdp is None:
            raise errors.InvalidSdp("the multipart body has no 'sdp' part")
        offer = check_offer(sdp)
        return Offer(offer.sdp, parse_session(session), offer.has_data_channel)
    raise errors.InvalidCallRequest(
        f"Content-Type must be {SDP_TYPE} (the offer) or multipart/form-data (parts 'sdp' and 'session')")


async def _part_text(part: Any) -> str | None:
    """A form field's text: a plain field, or a file part (how the openai SDK sends both)."""
    if part is None:
        return None
    if isinstance(part, str):
        return part
    data = await part.read(MAX_SDP_BYTES + 1)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise errors.InvalidCallRequest("a multipart part is not UTF-8 text") from None
