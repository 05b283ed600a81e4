"""What happens to sessions on a multi-node cluster: a node lost mid-turn, an in-place update,
and each stage's replica count over time under ``quillman bench`` load.

The cluster is :class:`~quillman_bench.local_cluster.LocalCluster` with ``CPU_NODES`` and
``configs/cpu-nodes.yaml`` deployed with ``serve deploy``. The scenarios return what they saw (the
turns and how long each step took): tests/e2e/test_cluster.py asserts on it, and
benchmarks/cluster.py reports it in docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quillman.client import RealtimeClient, TurnResult
from quillman_bench.local_cluster import CPU_NODES, LocalCluster
from quillman_bench.speech import spoken_question
from quillman_bench.server_process import ROOT, healthy

STAGES = ("Ingress", "Transcriber", "LanguageModel", "Speaker")
LONG_STORY = "Tell me a long story about a dragon and a knight."
STORYTELLER = "Tell very long, detailed stories."
UPDATED_INSTRUCTIONS = "You are the updated assistant. Answer in one short spoken sentence."


def deploy_config(folder: Path, port: int, **session: Any) -> Path:
    """configs/cpu-nodes.yaml on ``port``, with ``session`` settings changed (an update)."""
    config = yaml.safe_load((ROOT / "configs" / "cpu-nodes.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"].setdefault("session", {}).update(session)
    path = Path(folder) / f"cpu-nodes-{port}{'-updated' if session else ''}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def wait_healthy(url: str, timeout_s: float = 240) -> float:
    """Seconds until ``GET /healthz`` answers 200."""
    start = time.monotonic()
    while not healthy(url):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{url} not healthy after {timeout_s:g} s")
        time.sleep(1)
    return time.monotonic() - start


def replica_counts(url: str) -> dict[str, int]:
    """Running replicas per stage, as ``GET /healthz`` reports them (Serve's record)."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while a stage is down: the body still counts
        body = json.loads(exc.read())
    return {name: body["deployments"].get(name, {}).get("replicas", 0) for name in STAGES}


async def text_session(ws_url: str, instructions: str | None = None) -> RealtimeClient:
    """A session with text replies only: its turns use the LanguageModel, not ASR or TTS."""
    client = RealtimeClient(ws_url)
    await client.connect({"output_modalities": ["text"], **({"instructions": instructions} if instructions else {})})
    return client


# --- a node lost mid-turn ----------------------------------------------------------------------


@dataclass
class NodeLoss:
    before: TurnResult  # a spoken turn across the three nodes
    lost: TurnResult  # the spoken reply whose speech was on the lost node
    untouched: TurnResult  # a text reply generated at the same moment on the other nodes
    failed_after_s: float  # kill -> the lost turn's response.done
    replaced_after_s: float  # replacement node started -> /healthz 200 again
    after: TurnResult  # the same spoken session's next turn
    speaker_nodes: list[str] = field(default_factory=list)  # after the replacement


async def lose_the_speech_node(cluster: LocalCluster, ws_url: str, url: str,
                               questions: tuple[str, str]) -> NodeLoss:
    """Kill the "speech" node (every process on it) while a spoken reply is being synthesized
    there and a text session generates on the "models" node; then start "speech-2" with the same
    resource and let the spoken session go on."""
    async with RealtimeClient(ws_url) as voice:
        before = await voice.talk(spoken_question(questions[0]), 24000)
        text = await text_session(ws_url, STORYTELLER)
        try:
            await voice.ask(LONG_STORY)
            while (await voice.next_event())["type"] != "response.output_audio.delta":
                pass  # its speech is being synthesized on the speech node: the node goes now
            await text.ask(LONG_STORY)
            killed = time.monotonic()
            await asyncio.to_thread(cluster.kill, "speech")
            lost, untouched = await asyncio.gather(voice.collect_turn(), text.collect_turn())
            failed_after_s = lost.events[-1]["_received"] - killed if lost.events else float("nan")
        finally:
            await text.close()
        started = time.monotonic()
        await asyncio.to_thread(cluster.add_workers, {"speech-2": CPU_NODES["speech"]})
        await asyncio.to_thread(wait_healthy, url)
        replaced_after_s = time.monotonic() - started
        speaker_nodes = cluster.replica_nodes().get("Speaker", [])
        after = await voice.talk(spoken_question(questions[1]), 24000)
    return NodeLoss(before, lost, untouched, failed_after_s, replaced_after_s, after, speaker_nodes)


# --- an in-place update ------------------------------------------------------------------------


@dataclass
class Update:
    open_turn: TurnResult  # running on the old version when `serve deploy` was called
    old_instructions: str
    new_version_after_s: float  # serve deploy -> the first new session with the new instructions
    new_turn: TurnResult
    old_next_turn: TurnResult  # the old session again, after the update
    old_instructions_after: str


async def update_in_place(cluster: LocalCluster, ws_url: str, config: Path, timeout_s: float = 240) -> Update:
    """``serve deploy`` of ``config`` (new session instructions) while a text reply is being
    generated; new sessions are opened until one shows the new instructions."""
    old = await text_session(ws_url)
    try:
        old_instructions = old.session["instructions"]
        await old.ask(LONG_STORY)
        await old.wait_for("response.output_text.delta")
        deployed = time.monotonic()
        await asyncio.to_thread(cluster.deploy, config)
        open_turn = await old.collect_turn()
        while True:  # the proxy sends new sessions to the new Ingress once it runs
            new = await text_session(ws_url)
            if new.session["instructions"] == UPDATED_INSTRUCTIONS:
                break
            await new.close()
            if time.monotonic() - deployed > timeout_s:
                raise TimeoutError(f"the update did not reach new sessions in {timeout_s:g} s")
            await asyncio.sleep(1)
        new_version_after_s = time.monotonic() - deployed
        try:
            await new.ask("What is the capital of France?")
            new_turn = await new.collect_turn()
        finally:
            await new.close()
        await old.ask("Thank you. Say that again, shorter.")
        old_next_turn = await old.collect_turn()
        return Update(open_turn, old_instructions, new_version_after_s, new_turn, old_next_turn,
                      old.session["instructions"])
    finally:
        await old.close()
