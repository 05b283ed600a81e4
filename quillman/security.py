"""Who may connect: API keys and the Origin allow-list, as plain functions of a request's headers.

``headers`` is any ``Mapping[str, str]`` with lowercase names (Starlette's ``Headers`` is one, a
dict is another); ``subprotocols`` is the list a websocket client offered. The same checks guard
the websocket handshake and the protected HTTP routes (``/prewarm``, the API docs); a failed
check is returned as a :class:`quillman.errors.HandshakeRefused` value, which the ingress turns
into its HTTP answer (``protocol.http_error_body`` is the JSON it sends).
"""

from __future__ import annotations

import hmac
import os
from typing import Mapping, Sequence
from urllib.parse import urlsplit

from quillman import errors
from quillman.config import ServerConfig

# What browsers (which cannot set headers on a websocket) and OpenAI's JS SDK send the key as.
KEY_SUBPROTOCOL = "openai-insecure-api-key."


def configured_keys(config: ServerConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """``server.api_keys`` and the comma-separated keys of ``$<server.api_keys_env>``.

    Blank entries of the variable are skipped (``"a,,b"``, a trailing comma); blank keys in the
    config are refused when it is validated. No keys: the key check is off.
    """
    environ = os.environ if environ is None else environ
    from_env = [k.strip() for k in environ.get(config.api_keys_env, "").split(",") if k.strip()]
    return [*config.api_keys, *from_env]


def presented_key(headers: Mapping[str, str], subprotocols: Sequence[str] = ()) -> str | None:
    """The key a client sent: ``Authorization: Bearer <key>`` first, else the key subprotocol.

    Never the query string: it ends up in proxy and access logs.
    """
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for protocol in subprotocols:
        if protocol.startswith(KEY_SUBPROTOCOL):
            return protocol[len(KEY_SUBPROTOCOL):]
    return None


def key_is_valid(presented: str | None, keys: Sequence[str]) -> bool:
    if presented is None:
        return False
    # Constant time, and no early exit over the list: timing reveals nothing about the keys.
    # Compared as bytes: hmac.compare_digest refuses non-ASCII str.
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    return any(matches)


def origin_is_allowed(headers: Mapping[str, str], allowed: Sequence[str]) -> bool:
    origin = headers.get("origin")
    if origin is None:
        return True  # not a browser: API keys are the control
    if origin in allowed or "*" in allowed:
        return True
    # The server's own pages (the web client) are always allowed.
    return urlsplit(origin).netloc == headers.get("host")


def check_api_key(headers: Mapping[str, str], keys: Sequence[str],
                  subprotocols: Sequence[str] | None = None) -> errors.InvalidApiKey | None:
    """None when no keys are configured or a valid one was presented, else the refusal.

    ``subprotocols``: what a websocket client offered; None for an HTTP request (which can only
    send the header, and is told so).
    """
    if not keys or key_is_valid(presented_key(headers, subprotocols or ()), keys):
        return None
    how = "as 'Authorization: Bearer <key>'"
    if subprotocols is not None:
        how += f" or as the websocket subprotocol '{KEY_SUBPROTOCOL}<key>'"
    return errors.InvalidApiKey(f"invalid or missing API key: send it {how}")


def check_origin(headers: Mapping[str, str], allowed: Sequence[str]) -> errors.OriginNotAllowed | None:
    if origin_is_allowed(headers, allowed):
        return None
    return errors.OriginNotAllowed("this page's origin may not open sessions (server.allowed_origins)")
