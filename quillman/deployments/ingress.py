"""The FastAPI ingress: Realtime websocket, Twilio's phone calls, /prewarm, /healthz, /voices,
the API docs, the web client.

No ``from __future__ import annotations`` here: Serve rewrites the route signatures and FastAPI
must see real classes (a string ``WebSocket`` annotation turns into a query parameter).

Thin: each socket gets a :class:`RealtimeSession` wired to the three deployments through
DeploymentHandles. Handles are configured once (``stream=True`` for LLM and TTS) and reused.
Who may connect is decided by :mod:`quillman.security` (API keys, origins) over the request's
headers, in one check (:meth:`Ingress.authorize`, the HTTP routes' ``api_key`` dependency); with keys
configured the websockets, /prewarm, /stats, secrets, hang-ups and the API docs need one. Phone calls
(``/twilio/*``) are a :class:`~quillman.telephony.bridge.TwilioBridge` in front of the same
session; Twilio's signatures decide who may use them (:mod:`quillman.telephony.signature`).
WebRTC calls (``POST /v1/realtime/calls``) are a :class:`~quillman.webrtc.call.Call` each, held
by the replica that answered the offer (media flows to its UDP sockets, not through Serve's
proxy); ``/v1/realtime?call_id=…`` is a call's sideband socket. Ephemeral client secrets
(``ek_…``) stand in for a key once; they live in a store shared by the replicas
(:mod:`quillman.deployments.secrets`).
"""


import asyncio
import enum
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import parse_qsl

import numpy as np
from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from quillman import client_secrets, errors, protocol, security
from quillman.config import AppConfig
from quillman.engines.asr.base import Transcript
from quillman.engines.llm.base import Delta, GenerationRequest, Usage
from quillman.engines.smart_turn import load_smart_turn
from quillman.logs import log_to_console
from quillman.scheduling import QueueWait
from quillman.engines.vad import SileroVad
from quillman.deployments.health import ROLES, WHAT_TO_RUN, DeploymentWatch, read_serve_states
from quillman.metrics import ServeMetrics
from quillman.pipeline.session import RealtimeSession
from quillman.telephony import twilio_protocol
from quillman.telephony.bridge import TwilioBridge
from quillman.telephony.signature import TwilioAccess, called_url, configured_token
from quillman.deployments.secrets import SharedSecrets
from quillman.webrtc import network, signalling
from quillman.webrtc.call import COUNTS as CALL_COUNTS, Call, new_call_id, udp_sockets

logger = logging.getLogger(__name__)

WEB_DIR = Path(os.environ.get("QUILLMAN_WEB_DIR", Path(__file__).resolve().parents[2] / "web"))
HEALTH_TIMEOUT_S = 5.0
PREWARM_POLL_S = 1.0  # how often a waiting /prewarm looks for a deployment that failed to start
RETRY_AFTER_S = 5  # told to clients refused at capacity
UNAVAILABLE_POLL_S = 1.0  # a model request waiting this long asks whether its stage has replicas
T = TypeVar("T")

# FastAPI's own docs routes are off: the Ingress serves /openapi.json, /docs and /redoc itself, so
# that they can ask for a key when keys are configured (Serve copies this app's routes when it
# decorates the class, so what is protected must be decided in the routes, per replica config).
app = FastAPI(title="QuiLLMan", description="Voice chat over the OpenAI Realtime protocol",
              openapi_url=None, docs_url=None, redoc_url=None)


def refusal_response(refusal: errors.HandshakeRefused) -> JSONResponse:
    """The HTTP answer to a refused request: its status, the JSON ``error`` body, and
    ``Retry-After`` at capacity / ``WWW-Authenticate`` for a missing key."""
    headers = None
    if isinstance(refusal, errors.ServerAtCapacity):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    elif isinstance(refusal, errors.InvalidApiKey):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(protocol.http_error_body(refusal), status_code=refusal.http_status, headers=headers)


@app.exception_handler(errors.HandshakeRefused)
async def refused(request: Request, refusal: errors.HandshakeRefused) -> JSONResponse:
    """A refusal raised by a route's dependency (the API key) is answered like any other."""
    return refusal_response(refusal)


class Secrets(enum.Enum):
    """What an ``ek_`` client secret is worth on a route, where it is presented as the key."""

    AS_KEY = "as_key"      # nothing special: checked as a key, so refused when keys are set (admin routes)
    REFUSED = "refused"    # client_secret_not_allowed: only a real key goes here (minting, hang-up, sideband)
    REDEEMED = "redeemed"  # stands in for the key once: used up by this request (sessions, calls)


def api_key(secrets: Secrets = Secrets.AS_KEY) -> Any:
    """The dependency of every HTTP route that needs a key when keys are configured: it raises
    the refusal, which :func:`refused` answers (401, the JSON ``error``, ``WWW-Authenticate``)."""
    async def check_api_key(request: Request) -> None:
        ingress = serve.get_replica_context().servable_object  # the route's ``self``, as Serve finds it
        try:
            await ingress.authorize(request.headers, secrets=secrets)
        except errors.HandshakeRefused as refusal:
            logger.info("refused %s %s from %s: %s", request.method, request.url.path, request.client,
                        refusal.message)
            raise

    return Depends(check_api_key)


def error_response(exc: errors.QuillmanError, status: int = 400) -> JSONResponse:
    """A request refused for its content (a bad ``session`` config): the error event's body."""
    if isinstance(exc, errors.HandshakeRefused):
        return refusal_response(exc)
    return JSONResponse(protocol.http_error_body(exc), status_code=status)


def session_update(config: dict[str, Any]) -> protocol.SessionUpdate:
    """A ``session`` object (a call's part, a secret's bound config), by session.update's rules."""
    event = protocol.parse_client_event(json.dumps({"type": "session.update", "session": config}))
    return event.session


async def refuse(websocket: WebSocket, refusal: errors.HandshakeRefused) -> None:
    """Turn a websocket away before accepting it, so that the client can tell why.

    Through Ray's proxy (or uvicorn) the upgrade request gets a plain HTTP answer: 401 for a
    missing or wrong key, 403 for a foreign origin, 503 with ``Retry-After`` at capacity, and a
    JSON ``error`` body with a stable code. A close before accept (1008 / 1013) would reach the
    client only as a bare HTTP 403, the same for every reason; it stays the fallback for servers
    without the ASGI websocket denial-response extension.
    """
    logger.info("refused socket from %s: %s", websocket.client, refusal.message)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(refusal_response(refusal))
    else:
        await websocket.close(code=refusal.close_code, reason=refusal.message)


def unavailable_error(name: str) -> errors.ModelUnavailable:
    return errors.ModelUnavailable(
        f"{ROLES[name]} is unavailable: the replica working on this turn was lost (it crashed, or "
        "its node went away) or none is running; the turn ended. Serve starts a new one: try again shortly")


class HandleBackends:
    """The session's view of the three deployments; cancelling a caller cancels the request.

    A request to a deployment that has no running replica waits in Serve's handle until one
    starts, and a request whose replica became unreachable (its node was lost) is retried there
    the same way: the turn would hang until the session's model timeout, however long the
    replacement takes. So every wait longer than ``poll_s`` asks ``unavailable(name)``
    (:meth:`DeploymentWatch.unavailable`); when the stage has nothing running, the request is
    cancelled and the turn fails at once with :class:`~quillman.errors.ModelUnavailable`, as it
    does when the replica dies under a request (Ray's ActorDiedError, or ActorUnavailableError
    when its node is gone: which one comes first is a matter of Ray's timing).
    """

    def __init__(self, transcriber: DeploymentHandle, language_model: DeploymentHandle,
                 speaker: DeploymentHandle, unavailable: Callable[[str], Awaitable[bool]],
                 poll_s: float = UNAVAILABLE_POLL_S):
        self._asr = transcriber
        self._llm_unary = language_model
        self._llm = language_model.options(stream=True)
        self._tts = speaker.options(stream=True)
        self._unavailable = unavailable
        self._poll_s = poll_s

    async def _answer(self, name: str, response: Any) -> T:
        """``response``'s result (a Serve ``DeploymentResponse``), unless deployment ``name`` is
        out of reach meanwhile: the replica working on it gone (it crashed, or its node went
        away) or none running. A caller cancelled, or a stage out of reach, cancels the request."""
        task = asyncio.ensure_future(response)
        try:
            while not (await asyncio.wait({task}, timeout=self._poll_s))[0]:
                if await self._unavailable(name):
                    raise unavailable_error(name)
            return task.result()
        except RayActorError:  # ActorDiedError, ActorUnavailableError: the replica is gone
            raise unavailable_error(name) from None
        except BaseException:
            response.cancel()  # a no-op once answered
            raise
        finally:
            task.cancel()  # a no-op once done

    async def _stream(self, name: str, stream: Any) -> AsyncIterator[Any]:
        """The items of a handle's stream as they come. Every LLM token and TTS chunk passes
        here, so the liveness check costs no task per item: one watchdog per stream wakes every
        ``poll_s`` and, if the reader has been waiting that long, asks ``unavailable(name)``;
        when the stage is out of reach it cancels the wait, which ends the stream as
        :class:`~quillman.errors.ModelUnavailable`."""
        waiting: list[tuple[asyncio.Task, float]] = []  # (the reader's task, since when) while it waits
        lost = False

        async def watch() -> None:
            nonlocal lost
            while True:
                await asyncio.sleep(self._poll_s)
                if not waiting or time.monotonic() - waiting[0][1] < self._poll_s:
                    continue
                reader, since = waiting[0]
                if await self._unavailable(name) and waiting and waiting[0][1] == since:
                    lost = True
                    reader.cancel()
                    return

        watchdog = asyncio.create_task(watch(), name=f"watch-{name}")
        try:
            while True:
                waiting.append((asyncio.current_task(), time.monotonic()))
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not lost:
                        raise
                    asyncio.current_task().uncancel()  # our own cancel, turned into the error
                    raise unavailable_error(name) from None
                except RayActorError:  # ActorDiedError, ActorUnavailableError: the replica is gone
                    raise unavailable_error(name) from None
                finally:
                    waiting.clear()
                yield item
        finally:
            watchdog.cancel()
            stream.cancel()

    async def transcribe(self, pcm: np.ndarray, language: str | None,
                         deadline: float | None = None) -> Transcript:
        return await self._answer("Transcriber", self._asr.transcribe.remote(pcm, language, deadline))

    @staticmethod
    def _routed(handle: DeploymentHandle, request: GenerationRequest) -> DeploymentHandle:
        # The session id is Serve's routing key too: with a session-affine request router
        # (configs/cpu-cluster.yaml) a conversation's turns (and its prefills) reach the replica
        # holding its prompt cache. The default router ignores it.
        return handle.options(session_id=request.session_id) if request.session_id else handle

    # Both return the stream itself (no wrapping generator): closing it (barge-in) cancels the
    # Serve request at once.
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self._stream("LanguageModel", self._routed(self._llm, request).generate.remote(request))

    async def prefill(self, request: GenerationRequest) -> Usage | None:
        return await self._answer("LanguageModel", self._routed(self._llm_unary, request).prefill.remote(request))

    def synthesize(self, text: str, voice: str, sample_rate_hz: int,
                   deadline: float | None = None) -> AsyncIterator[QueueWait | np.ndarray]:
        return self._stream("Speaker", self._tts.synthesize.remote(text, voice, sample_rate_hz, deadline))


_PLACEHOLDER = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>QuiLLMan</title></head>
<body><h1>QuiLLMan</h1><p>The server is running. Connect a Realtime client to
<code>/v1/realtime</code>.</p></body></html>"""


def web_file(path: str) -> Response:
    """A file of the web client under WEB_DIR (``/`` is index.html); never outside it."""
    root = WEB_DIR.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root):
        return JSONResponse({"detail": "not found"}, status_code=404)
    if target.is_dir():
        target = target / "index.html"
    if target.is_file():
        return FileResponse(target, headers={"Cache-Control": "no-cache"})
    if not path:
        return HTMLResponse(_PLACEHOLDER)
    return JSONResponse({"detail": "not found"}, status_code=404)


@serve.deployment(name="Ingress", max_ongoing_requests=200)
@serve.ingress(app)
class Ingress:
    def __init__(self, transcriber: DeploymentHandle, language_model: DeploymentHandle,
                 speaker: DeploymentHandle, config: AppConfig):
        log_to_console()
        self.config = AppConfig.model_validate(config)
        self.handles = {"Transcriber": transcriber, "LanguageModel": language_model, "Speaker": speaker}
        self._voices: list[str] | None = None
        self.end_of_turn = load_smart_turn()  # semantic_vad's audio model, in this process like Silero
        self.sessions: dict[str, RealtimeSession] = {}
        self.open_sockets = 0
        self.metrics = ServeMetrics()
        app_name = serve.get_replica_context().app_name
        self.deployment_watch = DeploymentWatch(lambda: read_serve_states(app_name))
        self.backends = HandleBackends(transcriber, language_model, speaker, self.deployment_watch.unavailable)
        self.api_keys = security.configured_keys(self.config.server)
        if self.api_keys:
            logger.info("API keys required (%d configured)", len(self.api_keys))
        else:
            logger.warning(
                "No API keys configured: anyone who can reach the port can talk to the models. "
                "Keep http_options.host at 127.0.0.1, or set server.api_keys / $%s.",
                self.config.server.api_keys_env)
        telephony = self.config.telephony
        self.twilio = TwilioAccess(configured_token(telephony), api_keys_set=bool(self.api_keys))
        if (warning := self.twilio.startup_warning(telephony.auth_token_env)) is not None:
            logger.warning(warning)
        self.calls: dict[str, Call] = {}
        self._call_tasks: set[asyncio.Task] = set()
        webrtc = self.config.webrtc
        if webrtc.enabled:
            network.install(network.policy(webrtc))
        self.rtc_config = network.rtc_configuration(webrtc)
        self.secrets = SharedSecrets(app_name, self.config.client_secrets.max_live)

    async def _get_voices(self) -> list[str]:
        if self._voices is None:
            self._voices = await self.handles["Speaker"].voices.remote()
        return self._voices

    @app.websocket("/v1/realtime")
    async def realtime(self, websocket: WebSocket) -> None:
        call_id = websocket.query_params.get("call_id")
        if call_id is not None:
            return await self._serve_sideband(websocket, call_id)
        await self._serve_socket(websocket)

    # --- ephemeral client secrets ----------------------------------------------------------------

    async def _redeem(self, presented: str) -> dict[str, Any] | None:
        """The session config bound to a client secret, used up now; refused: raises."""
        outcome, bound = await self.secrets.redeem(presented)
        if outcome == "ok":
            return bound
        raise {"expired": errors.ClientSecretExpired("the client secret has expired; get a new one"),
               "used": errors.ClientSecretAlreadyUsed("the client secret was already used; get a new one"),
               }.get(outcome, errors.InvalidClientSecret("unknown client secret"))

    async def authorize(self, headers, subprotocols: list[str] | None = None, *,
                        secrets: Secrets = Secrets.AS_KEY, origin: bool = False) -> dict[str, Any] | None:
        """Every route's access check: None, or a redeemed secret's bound session config, if
        the request may go on; else raises the refusal. ``subprotocols``: a websocket's offered
        ones (None for HTTP, which can only send the header). The key (or the secret's kind)
        first, then the origin, and a secret is used up last, once all else passed."""
        presented = security.presented_key(headers, subprotocols or ())
        secret = secrets is not Secrets.AS_KEY and client_secrets.looks_like_secret(presented)
        if secret and secrets is Secrets.REFUSED:
            raise errors.ClientSecretNotAllowed("a client secret cannot be used here: send an API key")
        if not secret and (refusal := security.check_api_key(headers, self.api_keys, subprotocols)) is not None:
            raise refusal
        if origin and (refusal := security.check_origin(headers, self.config.server.allowed_origins)) is not None:
            raise refusal
        return await self._redeem(presented) if secret else None

    async def _mint(self, ttl_s: int, session: dict[str, Any] | None) -> JSONResponse:
        # The effective session object, as the GA API answers: checked like a session.update.
        probe = self._new_session(self._discard, await self._voices_or_default())
        if session is not None:
            probe.update_session(session_update(session))
        minted = await self.secrets.mint(ttl_s, session)
        if minted is None:
            raise errors.ClientSecretsExhausted("too many live client secrets; try again later")
        value, expires_at = minted
        logger.info("client secret minted (expires in %d s)", ttl_s)  # never the value
        return JSONResponse({"value": value, "expires_at": expires_at,
                             "session": probe.settings.session_object(probe.id).model_dump(mode="json")})

    @staticmethod
    async def _discard(_frame: str) -> None:
        return None

    @app.post("/v1/realtime/client_secrets", dependencies=[api_key(Secrets.REFUSED)])
    async def create_client_secret(self, request: Request) -> Response:
        """A short-lived, single-use ``ek_…`` secret (the GA API's ``realtime.client_secrets``):
        ``{"expires_after": {"anchor": "created_at", "seconds": N}, "session": {...}}`` ->
        ``{"value", "expires_at", "session"}``. Needs a real API key when keys are configured."""
        try:
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                raise errors.InvalidCallRequest("the body is not JSON") from None
            if not isinstance(body, dict):
                raise errors.InvalidCallRequest("the body must be a JSON object")
            limits = self.config.client_secrets
            expires = body.get("expires_after") or {}
            if not isinstance(expires, dict) or expires.get("anchor", "created_at") != "created_at":
                raise errors.InvalidCallRequest("expires_after.anchor must be 'created_at'")
            ttl = expires.get("seconds", limits.default_ttl_s)
            if not isinstance(ttl, int) or isinstance(ttl, bool) or not 10 <= ttl <= limits.max_ttl_s:
                raise errors.InvalidCallRequest(
                    f"expires_after.seconds must be an integer from 10 to {limits.max_ttl_s}")
            session = body.get("session")
            if session is not None and not isinstance(session, dict):
                raise errors.InvalidCallRequest("session must be an object (a session config)")
            return await self._mint(ttl, session)
        except errors.QuillmanError as exc:
            logger.info("client secret refused from %s: %s", request.client, exc.message)
            return error_response(exc)

    @app.post("/web/client_secret", include_in_schema=False)
    async def page_client_secret(self, request: Request) -> Response:
        """The web page's backend endpoint: a secret for this page's next call, so that a page
        served by a keyed server never holds the key. Off unless
        ``client_secrets.web_page_endpoint`` (then 204: no secret); from this server's own pages
        (Origin) only."""
        if not self.config.client_secrets.web_page_endpoint:
            # 204, not an error: the page then connects without a credential (or with the key
            # it was given), and the browser logs nothing.
            return Response(status_code=204)
        if "origin" not in request.headers:
            return refusal_response(errors.OriginNotAllowed("only the server's web page may ask for a secret"))
        if (refusal := security.check_origin(request.headers, self.config.server.allowed_origins)) is not None:
            return refusal_response(refusal)
        try:
            return await self._mint(self.config.client_secrets.default_ttl_s, None)
        except errors.QuillmanError as exc:
            return error_response(exc)

    # --- WebRTC calls ---------------------------------------------------------------------------------

    @app.post(signalling.CALLS_PATH)
    async def create_call(self, request: Request) -> Response:
        """A WebRTC call (the GA API's ``realtime.calls.create``): the SDP offer in, 201 with the
        answer and ``Location: /v1/realtime/calls/<call_id>``."""
        if not self.config.webrtc.enabled:
            return refusal_response(errors.WebRtcDisabled("WebRTC calls are off on this server (webrtc.enabled)"))
        if (refusal := security.check_origin(request.headers, self.config.server.allowed_origins)) is not None:
            return refusal_response(refusal)
        if self.open_sockets >= self.config.server.max_sessions_per_replica:
            return refusal_response(errors.ServerAtCapacity(f"server at capacity; try again in {RETRY_AFTER_S} s"))
        self.open_sockets += 1  # before any await, as for sockets; given back when the call ends
        call: Call | None = None
        try:
            offer = await signalling.read_offer(request)  # before the secret is used up
            bound = await self.authorize(request.headers, secrets=Secrets.REDEEMED)
            voices = await self._voices_or_default()
            webrtc = self.config.webrtc

            def make_session(send, playback) -> RealtimeSession:
                session = self._new_session(send, voices, playback=playback)
                for config in (bound, offer.session):  # the secret's config, then the request's
                    if config is not None:
                        session.update_session(session_update(config))
                return session

            call = Call(new_call_id(), make_session, self.rtc_config, webrtc.connect_timeout_s,
                        webrtc.max_event_backlog, webrtc.jitter_buffer_frames)
            answer = await call.answer(offer)
        except errors.QuillmanError as exc:
            self.open_sockets -= 1
            if call is not None:
                await call.close("refused")
            logger.info("call refused from %s: %s %s", request.client, exc.code, exc.message)
            return error_response(exc)
        except BaseException:
            self.open_sockets -= 1
            if call is not None:
                await call.close("failed")
            raise
        self.calls[call.id] = call
        task = asyncio.create_task(self._run_call(call), name=f"{call.id}-run")
        self._call_tasks.add(task)
        task.add_done_callback(self._call_tasks.discard)
        logger.info("[%s] call %s answered (%d calls)", call.session.id, call.id, len(self.calls))
        return Response(answer, status_code=201, media_type=signalling.SDP_TYPE,
                        headers={"Location": f"{signalling.CALLS_PATH}/{call.id}"})

    async def _run_call(self, call: Call) -> None:
        session = call.session
        self.sessions[session.id] = session
        try:
            await call.run()
        except Exception:  # noqa: BLE001 - the call's own bug: logged; the call is closed
            logger.exception("[%s] call %s failed", session.id, call.id)
        finally:
            self.open_sockets -= 1
            self.calls.pop(call.id, None)
            self.sessions.pop(session.id, None)
            logger.info("[%s] call %s closed (%s): %d turns, %d responses", session.id, call.id,
                        call.end_reason, session.turns_committed, session.responses_done)

    @app.post(signalling.CALLS_PATH + "/{call_id}/hangup", dependencies=[api_key(Secrets.REFUSED)])
    async def hang_up_call(self, call_id: str, request: Request) -> Response:
        """End a call from the server side (the GA API's ``realtime.calls.hangup``)."""
        try:
            call = self._call(call_id)
        except errors.QuillmanError as exc:
            return error_response(exc)
        call.hang_up("hung up by the server")
        return Response(status_code=200)

    def _call(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None or not call.open:
            raise errors.CallNotFound(
                "no such call on this replica (it ended, or another ingress replica holds it)")
        return call

    async def _serve_sideband(self, websocket: WebSocket, call_id: str) -> None:
        """A server-side application watching and steering a call: the call's events, and
        client events into the same session (not audio: that is the track's)."""
        try:
            await self.authorize(websocket.headers, websocket.scope.get("subprotocols", []),
                                 secrets=Secrets.REFUSED, origin=True)
            call = self._call(call_id)
        except errors.HandshakeRefused as refusal:
            return await refuse(websocket, refusal)
        requested = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="realtime" if "realtime" in requested else None)
        key = call.attach(websocket.send_text)
        logger.info("[%s] sideband attached to call %s", call.session.id, call.id)
        receive = self._receiver(websocket)
        ended = asyncio.ensure_future(call.ended.wait())
        try:
            while True:
                frame = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait({frame, ended}, return_when=asyncio.FIRST_COMPLETED)
                if ended in done:
                    frame.cancel()
                    break
                if (message := frame.result()) is None:
                    break
                call.receive_event(message)
        finally:
            ended.cancel()
            call.detach(key)
            try:
                await websocket.close()
            except Exception:  # noqa: BLE001 - already closed by the peer
                pass

    @app.websocket("/pipeline")
    async def pipeline(self, websocket: WebSocket) -> None:
        await self._serve_socket(websocket)

    @app.post("/twilio/voice", include_in_schema=False)
    async def twilio_voice(self, request: Request) -> Response:
        """Twilio's voice webhook: answer the call with TwiML that streams it to us."""
        params = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        public = self.config.telephony.public_url
        url = called_url(public, request.url.scheme, request.headers, request.url.path, request.url.query)
        if (refusal := self.twilio.check(url, request.headers, params)) is not None:
            logger.info("refused %s from %s: %s", request.url.path, request.client, refusal.message)
            return refusal_response(refusal)
        stream = called_url(public, "wss" if url.startswith("https") else "ws", request.headers,
                            twilio_protocol.MEDIA_STREAM_PATH)
        logger.info("call %s from %s: streaming to %s", params.get("CallSid", "-"), params.get("From", "-"), stream)
        return Response(twilio_protocol.twiml_connect_stream(stream), media_type="application/xml")

    @app.websocket("/twilio/media-stream")
    async def twilio_media_stream(self, websocket: WebSocket) -> None:
        await self._serve_socket(websocket, TwilioBridge(websocket.send_text))

    async def _socket_access(self, websocket: WebSocket, bridge: TwilioBridge | None) -> dict[str, Any] | None:
        """:meth:`authorize` for a session's socket (a secret's bound config, or None); Twilio
        cannot send a key: its signature instead."""
        if bridge is None:
            return await self.authorize(websocket.headers, websocket.scope.get("subprotocols", []),
                                        secrets=Secrets.REDEEMED, origin=True)
        url = called_url(self.config.telephony.public_url, websocket.url.scheme, websocket.headers,
                         websocket.url.path, websocket.url.query)
        if (refusal := self.twilio.check(url, websocket.headers)) is not None:
            raise refusal
        return None

    async def _serve_socket(self, websocket: WebSocket, bridge: TwilioBridge | None = None) -> None:
        # Every check happens before the socket is accepted.
        try:
            bound = await self._socket_access(websocket, bridge)
        except errors.HandshakeRefused as refusal:
            return await refuse(websocket, refusal)
        if self.open_sockets >= self.config.server.max_sessions_per_replica:
            return await refuse(websocket, errors.ServerAtCapacity(
                f"server at capacity; try again in {RETRY_AFTER_S} s"))
        self.open_sockets += 1  # before any await: concurrent handshakes can't overshoot
        session: RealtimeSession | None = None
        close_code = 1000
        try:
            requested = websocket.scope.get("subprotocols", [])
            await websocket.accept(subprotocol="realtime" if "realtime" in requested else None)
            # A call's session plays its audio on the bridge; its other events are not for Twilio.
            send = self._discard if bridge is not None else websocket.send_text
            session = self._new_session(send, await self._voices_or_default(), playback=bridge)
            if bound is not None:
                session.update_session(session_update(bound))
            self.sessions[session.id] = session
            logger.info("[%s] connected (%d active)", session.id, len(self.sessions))
            receive = self._receiver(websocket)
            close_code = await (bridge.run(session, receive) if bridge is not None else session.run(receive))
        except Exception:  # noqa: BLE001 - the session's own bug: logged, the socket closes 1011
            logger.exception("[%s] session failed", session.id if session else "-")
            close_code = 1011
        finally:
            self.open_sockets -= 1
            if session is not None:
                self.sessions.pop(session.id, None)
                logger.info("[%s] closed: %d turns, %d responses", session.id,
                            session.turns_committed, session.responses_done)
            try:
                await websocket.close(code=close_code)
            except Exception:  # noqa: BLE001 - already closed by the peer
                pass

    async def _voices_or_default(self) -> list[str]:
        try:
            return await self._get_voices()
        except Exception:  # noqa: BLE001 - the Speaker may still be starting
            return [self.config.session.voice]

    def _new_session(self, send, voices: list[str], playback=None) -> RealtimeSession:
        return RealtimeSession(
            backends=self.backends, config=self.config.session, vad_config=self.config.vad,
            make_vad=SileroVad, send=send, llm=self.config.llm, voices=voices,
            metrics=self.metrics, end_of_turn=self.end_of_turn, playback=playback,
            mcp=self.config.mcp,
        )

    @staticmethod
    def _receiver(websocket: WebSocket):
        async def receive() -> str | bytes | None:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return None
            if message["type"] == "websocket.disconnect":
                return None
            return message.get("text") if message.get("text") is not None else message.get("bytes")

        return receive

    async def check_health(self) -> None:
        # Serve calls this every few seconds: reading its record here logs a model deployment
        # that failed to start (once, with what to run) even when nobody asks /healthz.
        await self.deployment_watch.states()

    @app.get("/prewarm", dependencies=[api_key()])
    async def prewarm(self) -> JSONResponse:
        """Load and warm every model; returns per-deployment load and warm-up times.

        Needs a key when keys are configured (it runs every model once per request). A
        deployment that failed to start is answered at once (503, with Serve's reason) instead
        of waited on: requests to a deployment with no replica would queue forever. Any other
        failure is a 503 with a plain message too; its details go to the log, not to the client.
        """
        start = time.perf_counter()
        body: dict[str, dict[str, Any]] = {}
        error: str | None = None
        try:
            body = await self._warm_all()
            if all(entry["status"] == "ready" for entry in body.values()):
                await self._get_voices()
        except Exception:  # noqa: BLE001 - answered with a plain 503, never a 500 with Ray's text
            logger.exception("/prewarm failed")
            error = "the warm-up could not run; the server log has the details"
        ok = error is None and all(entry["status"] == "ready" for entry in body.values())
        answer: dict[str, Any] = {"status": "ready" if ok else "error",
                                  "total_ms": round((time.perf_counter() - start) * 1000, 1),
                                  "deployments": body}
        if error is not None:
            answer["error"] = error
        return JSONResponse(answer, status_code=200 if ok else 503)

    async def _warm_all(self) -> dict[str, dict[str, Any]]:
        """name -> the deployment's warm-up result, or Serve's report of why it failed to start."""
        names = list(self.handles)
        responses: dict[str, Any] = {}
        tasks: dict[str, asyncio.Future] = {}
        body: dict[str, Any] = {}
        try:
            for name in names:
                responses[name] = self.handles[name].warmup.remote()
                tasks[name] = asyncio.ensure_future(responses[name])
            while pending := [name for name in names if name not in body]:
                await asyncio.wait([tasks[name] for name in pending], timeout=PREWARM_POLL_S)
                failures = await self.deployment_watch.failures()
                for name in pending:
                    if name in failures:  # Serve's reason beats the handle's "unavailable"
                        body[name] = failures[name]
                    elif tasks[name].done():
                        body[name] = self._warmup_result(name, tasks[name])
        finally:
            for name, task in tasks.items():
                if not task.done():
                    task.cancel()
                    responses[name].cancel()
        return body

    @staticmethod
    def _warmup_result(name: str, task: asyncio.Future) -> dict[str, Any]:
        if task.cancelled() or task.exception() is not None:
            logger.warning("warm-up of %s failed", name,
                           exc_info=None if task.cancelled() else task.exception())
            return {"status": "error", "error": f"warm-up failed; {WHAT_TO_RUN}"}
        return {"status": "ready", **task.result()}

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        states = await self.deployment_watch.states()
        failures = await self.deployment_watch.failures()

        async def probe(name: str) -> dict[str, Any]:
            if name in failures:
                return failures[name]
            start = time.perf_counter()
            try:
                await asyncio.wait_for(self.handles[name].ping.remote(), HEALTH_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                state = states.get(name)
                if state is not None and state.starting:
                    return {"status": "starting", "serve_status": state.status}
                logger.warning("health probe of %s failed: %r", name, exc)
                return {"status": "unhealthy", "error": f"no answer within {HEALTH_TIMEOUT_S:.0f} s"
                        if isinstance(exc, asyncio.TimeoutError) else "the health probe failed"}
            return {"status": "healthy", "latency_ms": round((time.perf_counter() - start) * 1000, 1)}

        self.metrics.refresh()  # probes come every few seconds: keeps the sessions gauge alive
        names = list(self.handles)
        results = await asyncio.gather(*(probe(name) for name in names))
        deployments = {"Ingress": {"status": "healthy", "sessions": len(self.sessions),
                                   "webrtc": self.webrtc_counts()},
                       **dict(zip(names, results))}
        for name, report in deployments.items():  # what autoscaling has made of each stage
            if name in states:
                report["replicas"] = states[name].replicas
        healthy = all(d["status"] == "healthy" for d in deployments.values())
        if failures:
            overall = "failed"
        elif any(d["status"] == "starting" for d in deployments.values()):
            overall = "starting"
        else:
            overall = "healthy" if healthy else "unhealthy"
        return JSONResponse({"status": overall, "deployments": deployments},
                            status_code=200 if healthy else 503)

    def webrtc_counts(self) -> dict[str, int]:
        """Live WebRTC objects of this replica: a leak shows as a count that does not go back."""
        return {"calls": len(self.calls), "peer_connections": CALL_COUNTS["peer_connections"],
                "running_calls": CALL_COUNTS["calls"], "udp_sockets": udp_sockets(),
                "tasks": len(asyncio.all_tasks())}

    @app.get("/stats", dependencies=[api_key()])
    async def stats(self) -> JSONResponse:
        """What the language model's scheduler holds now, as one LanguageModel replica reports
        it (vLLM: running and waiting requests, KV cache use; ``{}`` for engines that keep none).
        Needs a key when keys are configured."""
        try:
            llm = await asyncio.wait_for(self.handles["LanguageModel"].scheduler_stats.remote(),
                                         HEALTH_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a plain 503; the details go to the log
            logger.warning("/stats: the language model did not answer", exc_info=True)
            return JSONResponse({"error": "the language model did not answer; see /healthz"},
                                status_code=503)
        return JSONResponse({"LanguageModel": llm})

    @app.get("/voices")
    async def voices(self) -> dict[str, Any]:
        return {"voices": await self._get_voices(), "default": self.config.session.voice}

    # The API docs: what FastAPI would serve, behind the key when keys are configured. (A browser
    # sends no Authorization header, so with keys these are for tools or a proxy that adds it.)
    @app.get("/openapi.json", include_in_schema=False, dependencies=[api_key()])
    async def openapi(self, request: Request) -> Response:
        return JSONResponse(request.app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[api_key()])
    async def docs(self, request: Request) -> Response:
        return get_swagger_ui_html(openapi_url=self._openapi_url(request),
                                   title=f"{request.app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=[api_key()])
    async def redoc(self, request: Request) -> Response:
        return get_redoc_html(openapi_url=self._openapi_url(request),
                              title=f"{request.app.title} - ReDoc")

    @staticmethod
    def _openapi_url(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + "/openapi.json"

    # Last route: the web client. Serve copies the class's routes when it decorates the class,
    # so static files are served by a route here rather than a mount added afterwards.
    @app.get("/{path:path}", include_in_schema=False)
    async def web(self, path: str) -> Response:
        return web_file(path)
