"""What Serve recorded about each deployment of this app, so a failed start is said, not waited on.

A model deployment that cannot start (a constructor that raises, a replica that crashes in native
code) is retried by Serve and then marked ``DEPLOY_FAILED``; requests to it would wait forever.
The ingress reads Serve's record (``serve.status()``) to answer ``/healthz`` and ``/prewarm`` with
the failed deployment and its reason, and logs each new failure once with what to run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger(__name__)

FAILED = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
STARTING = frozenset({"UPDATING"})
WHAT_TO_RUN = "run `quillman doctor` on the server to see why"
ROLES = {"Transcriber": "speech recognition (ASR)", "LanguageModel": "the language model",
         "Speaker": "speech synthesis (TTS)", "Ingress": "the web ingress"}


@dataclass(frozen=True)
class DeploymentState:
    status: str  # Serve's DeploymentStatus name: HEALTHY, UPDATING, UNHEALTHY, DEPLOY_FAILED, ...
    message: str = ""
    replicas: int = 0  # running replicas (autoscaling changes it)

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    @property
    def starting(self) -> bool:
        return self.status in STARTING

    @property
    def unavailable(self) -> bool:
        """Serve holds requests to a deployment without replicas until one starts; with none
        running and the deployment failed (a replica crashed, its node was lost, it cannot
        start) that wait may take minutes. Not while UPDATING: a rolling update's gap is short."""
        return self.failed and self.replicas == 0


_EXCEPTION_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit)\b.*)$", re.M)
_RAY_INTERNALS = re.compile(r"\s*\((?:[^()]*\b(?:pid|ip|actor_id|repr)=[^()]*)+\)|\b(?:pid|ip|actor_id)=\S+")


def plain_reason(message: str) -> str:
    """Serve's record in a line: its own summary and the last exception, without actor ids,
    pids, addresses or the traceback (those stay in the log)."""
    text = message.strip()
    if not text:
        return "no reason recorded"
    summary = text.split(" See controller logs", 1)[0].split("Error:", 1)[0].strip()
    exceptions = [line for line in _EXCEPTION_LINE.findall(text) if not line.startswith(("Traceback", "Error:"))]
    detail = exceptions[-1].strip() if exceptions else ""
    reason = f"{summary} Last error: {detail}" if detail and detail not in summary else summary
    return " ".join(_RAY_INTERNALS.sub("", reason).split())[:500]


def failure_report(name: str, state: DeploymentState) -> dict[str, str]:
    """What /healthz and /prewarm say of a failed deployment: its role, Serve's reason, what to run."""
    reason = plain_reason(state.message)
    role = ROLES.get(name, name)
    return {"status": "failed", "serve_status": state.status, "role": role, "reason": reason,
            "error": f"{role} failed to start ({name}: {state.status}): {reason} — {WHAT_TO_RUN}"}


def read_serve_states(app_name: str) -> dict[str, DeploymentState]:
    """Blocking (a call to Serve's controller): run it in a thread."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: DeploymentState(str(getattr(d.status, "value", d.status)), d.message or "",
                                  replicas=_running(d.replica_states))
            for name, d in app.deployments.items()}


def _running(replica_states: dict | None) -> int:
    return int(sum(n for state, n in (replica_states or {}).items()
                   if str(getattr(state, "value", state)) == "RUNNING"))


class DeploymentWatch:
    """Serve's record of this app's deployments, read at most every ``max_age_s``."""

    def __init__(self, read: Callable[[], dict[str, DeploymentState]], max_age_s: float = 1.0):
        self._read = read
        self._max_age_s = max_age_s
        self._states: dict[str, DeploymentState] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()
        self._logged: set[tuple[str, str]] = set()

    async def states(self) -> dict[str, DeploymentState]:
        async with self._lock:
            if time.monotonic() - self._read_at >= self._max_age_s:
                try:
                    self._states = await asyncio.to_thread(self._read)
                except Exception:  # noqa: BLE001 - the controller may be restarting; keep the last record
                    logger.debug("could not read Serve's deployment status", exc_info=True)
                self._read_at = time.monotonic()
                self._log_new_failures()
            return self._states

    async def unavailable(self, name: str) -> bool:
        state = (await self.states()).get(name)
        return state is not None and state.unavailable

    async def failures(self) -> dict[str, dict[str, str]]:
        """name -> :func:`failure_report`, for each failed deployment."""
        return {name: failure_report(name, state) for name, state in (await self.states()).items() if state.failed}

    def _log_new_failures(self) -> None:
        for name, state in self._states.items():
            key = (name, state.status)
            if state.failed and key not in self._logged:
                self._logged.add(key)
                logger.error("%s", failure_report(name, state)["error"])
