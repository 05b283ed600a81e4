"""The body of POST /v1/realtime/calls: raw SDP or multipart, checked before any peer exists."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from quillman import errors
from quillman.webrtc.signalling import check_offer, read_offer

OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" \
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"


def request(body: bytes, content_type: str) -> Request:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    return Request({"type": "http", "method": "POST", "path": "/v1/realtime/calls", "headers": [
        (b"content-type", content_type.encode())]}, receive)


def test_an_offer_with_audio_and_a_data_channel():
    offer = check_offer(OFFER)
    assert offer.has_data_channel and offer.session is None


@pytest.mark.parametrize("sdp, code", [
    ("", "invalid_sdp"), ("hello", "invalid_sdp"), ("v=0\r\ns=-\r\n", "invalid_sdp"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "offer_without_audio"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 x\r\n" + "a=x\r\n" * 20000, "invalid_sdp"),
])
def test_bad_offers(sdp, code):
    with pytest.raises(errors.InvalidSdp) as info:
        check_offer(sdp)
    assert info.value.code == code and info.value.http_status == 400


async def test_raw_sdp_body():
    offer = await read_offer(request(OFFER.encode(), "application/sdp"))
    assert offer.sdp.startswith("v=0")


async def test_multipart_with_a_session_part_as_the_openai_sdk_sends_it():
    boundary = "xyz"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="sdp"; filename="sdp"\r\n'
            f'Content-Type: application/sdp\r\n\r\n{OFFER}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="session"; filename="session"\r\n'
            f'Content-Type: application/json\r\n\r\n{json.dumps({"instructions": "Be brief."})}\r\n'
            f'--{boundary}--\r\n').encode()
    offer = await read_offer(request(body, f"multipart/form-data; boundary={boundary}"))
    assert offer.session == {"instructions": "Be brief."} and "m=audio" in offer.sdp


@pytest.mark.parametrize("body, content_type, code", [
    (b"{}", "application/json", "invalid_request"),
    (b"--b\r\nContent-Disposition: form-data; name=\"session\"\r\n\r\n{}\r\n--b--\r\n",
     "multipart/form-data; boundary=b", "invalid_sdp"),
    (b"--b\r\nContent-Disposition: form-data; name=\"sdp\"\r\n\r\n" + OFFER.encode() +
     b"\r\n--b\r\nContent-Disposition: form-data; name=\"session\"\r\n\r\n[1]\r\n--b--\r\n",
     "multipart/form-data; boundary=b", "invalid_request"),
    (b"\xff\xfe", "application/sdp", "invalid_sdp"),
])
async def test_bad_bodies(body, content_type, code):
    with pytest.raises(errors.HandshakeRefused) as info:
        await read_offer(request(body, content_type))
    assert info.value.code == code
