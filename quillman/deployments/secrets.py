"""The client-secret store shared by every Ingress replica: one named Ray actor per app.

Serve may run several Ingress replicas, and a secret minted through one must open a call on
another (the HTTP proxy picks the replica per request), so secrets cannot live in a replica's
memory. The actor is created on first use by whichever replica needs it (``get_if_exists``),
takes no CPU reservation, and holds only digests (:mod:`quillman.client_secrets`). If it dies
(its node goes away), live secrets are lost: they are short-lived, and the next mint creates a
new store; a secret from the old one is then refused as unknown.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import RayActorError

from quillman.client_secrets import Outcome, SecretStore

logger = logging.getLogger(__name__)


class SharedSecrets:
    def __init__(self, app_name: str, max_live: int):
        self._name = f"quillman-client-secrets-{app_name}"
        self._max_live = max_live
        self._actor = None

    def _store(self):
        if self._actor is None:
            self._actor = ray.remote(SecretStore).options(
                name=self._name, get_if_exists=True, num_cpus=0, max_restarts=0,
            ).remote(self._max_live)
        return self._actor

    async def mint(self, ttl_s: float, session: dict[str, Any] | None) -> tuple[str, int] | None:
        return await self._call("mint", ttl_s, session)

    async def redeem(self, secret: str) -> tuple[Outcome, dict[str, Any] | None]:
        return await self._call("redeem", secret)

    async def _call(self, method: str, *args: Any) -> Any:
        for attempt in (1, 2):
            try:
                return await getattr(self._store(), method).remote(*args)
            except RayActorError:
                if attempt == 2:
                    raise
                logger.warning("the client-secret store is gone; starting a new one")
                self._actor = None
