"""Twilio request signatures (``X-Twilio-Signature``) and who may use ``/twilio/*``.

Twilio cannot send a bearer key; it signs each request with the account's auth token:
base64(HMAC-SHA1(token, URL + every POST parameter's name and value, sorted by name)). The
websocket handshake of a Media Stream is signed the same way over its ``wss://`` URL. The URL is
the one Twilio called: behind a tunnel that is the public URL (``telephony.public_url``), not
what the server sees.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping

from quillman import errors
from quillman.config import TelephonyConfig

logger = logging.getLogger(__name__)


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    payload = url + "".join(f"{name}{value}" for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def configured_token(config: TelephonyConfig, environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    return config.auth_token or (environ.get(config.auth_token_env) or "").strip() or None


class TwilioAccess:
    """The rule for ``/twilio/*``: signed requests when a token is set; refused when the server
    has API keys but no token (setting keys never leaves this door open); open otherwise, like
    the rest of a server without keys."""

    def __init__(self, auth_token: str | None, api_keys_set: bool):
        self.auth_token = auth_token
        self.refuse_all = auth_token is None and api_keys_set

    def startup_warning(self, token_env: str) -> str | None:
        if self.refuse_all:
            return (f"API keys are set but no Twilio auth token (telephony.auth_token / ${token_env}): "
                    "/twilio/* is refused, since Twilio cannot send an API key. Set the token to "
                    "take phone calls.")
        return None

    def check(self, url: str, headers: Mapping[str, str],
              params: Mapping[str, str] | None = None) -> errors.HandshakeRefused | None:
        if self.refuse_all:
            return errors.TwilioDisabled(
                "phone calls are off: the server has API keys but no Twilio auth token")
        if self.auth_token is None:
            return None
        presented = headers.get("x-twilio-signature", "")
        expected = twilio_signature(self.auth_token, url, params)
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            return errors.InvalidTwilioSignature("missing or invalid X-Twilio-Signature")
        return None


def called_url(public_url: str | None, scheme: str, headers: Mapping[str, str], path: str,
               query: str = "") -> str:
    """The URL Twilio requested: on ``telephony.public_url`` if set, else on the Host it sent
    (and X-Forwarded-Proto from a tunnel or proxy). ``scheme`` is http(s) or ws(s)."""
    secure = scheme in ("https", "wss") or headers.get("x-forwarded-proto", "") in ("https", "wss")
    websocket = scheme.startswith("ws")
    if public_url:
        base = public_url.rstrip("/")
        for plain, ws in (("https://", "wss://"), ("http://", "ws://")):
            if websocket and base.startswith(plain):
                base = ws + base[len(plain):]
            elif not websocket and base.startswith(ws):
                base = plain + base[len(ws):]
    else:
        proto = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
        base = f"{proto}://{headers.get('host', 'localhost')}"
    return base + path + (f"?{query}" if query else "")
