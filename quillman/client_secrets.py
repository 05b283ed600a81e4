"""Ephemeral client secrets (``ek_…``): short-lived, single-use stand-ins for an API key.

A server-side application with a real key mints one (``POST /v1/realtime/client_secrets``) and
hands it to a browser or phone, which uses it once to open a WebRTC call or a websocket. The
key itself never reaches the page.

Only a SHA-256 of each secret is kept, so the store (and anything that dumps it) holds nothing a
client could present; the ingress never logs a presented secret either. A secret is refused
with a stable code: unknown (``invalid_client_secret``), past its expiry
(``client_secret_expired``), already used once (``client_secret_already_used``). Redeeming is
one step (check and mark used), so two requests racing with one secret cannot both win.

Pure Python: :class:`SecretStore` runs in one process; the ingress shares one store between its
replicas as a named Ray actor (:mod:`quillman.deployments.secrets`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

PREFIX = "ek_"
REMEMBER_EXPIRED_S = 3600.0  # an expired secret is told apart from an unknown one this long

Outcome = Literal["ok", "invalid", "expired", "used"]


def looks_like_secret(presented: str | None) -> bool:
    return presented is not None and presented.startswith(PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class _Grant:
    expires_at: float
    session: dict[str, Any] | None  # the session config bound to it (a session.update body)
    used: bool = False


class SecretStore:
    def __init__(self, max_live: int = 10000, clock: Callable[[], float] = time.time):
        self.max_live = max_live
        self._clock = clock
        self._grants: dict[str, _Grant] = {}

    def mint(self, ttl_s: float, session: dict[str, Any] | None = None) -> tuple[str, int] | None:
        """A new secret and its expiry (Unix seconds); None when ``max_live`` are live."""
        now = self._clock()
        self._sweep(now)
        if sum(1 for g in self._grants.values() if not g.used and g.expires_at > now) >= self.max_live:
            return None
        secret = PREFIX + secrets.token_urlsafe(32)
        expires_at = int(now + ttl_s)
        self._grants[_digest(secret)] = _Grant(expires_at, session)
        return secret, expires_at

    def redeem(self, secret: str) -> tuple[Outcome, dict[str, Any] | None]:
        """Use a secret: ("ok", its bound session config) once, then "used"; never raises."""
        now = self._clock()
        self._sweep(now)
        grant = self._grants.get(_digest(secret))
        if grant is None:
            return "invalid", None
        if grant.expires_at <= now:
            return "expired", None
        if grant.used:
            return "used", None
        grant.used = True
        return "ok", grant.session

    def live(self) -> int:
        now = self._clock()
        return sum(1 for g in self._grants.values() if not g.used and g.expires_at > now)

    def __len__(self) -> int:
        return len(self._grants)

    def _sweep(self, now: float) -> None:
        for digest in [d for d, g in self._grants.items() if g.expires_at + REMEMBER_EXPIRED_S <= now]:
            del self._grants[digest]
