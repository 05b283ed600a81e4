"""The application on a three-node Ray cluster, deployed the way KubeRay and Anyscale deploy it.

``ray start --head`` and two ``ray start --address`` worker nodes on this machine (token
authentication on, as Ray 2.60 sets it up), ``serve deploy configs/cpu-nodes.yaml``: the Ingress on
the head, Transcriber and LanguageModel on the "models" node, the Speaker on the "speech" node,
pinned by custom resources. Then:

- a worker node is lost mid-turn (SIGKILL to all its processes): the spoken reply whose speech
  was being synthesized there ends ``failed`` with ``model_unavailable`` at once; a text-only
  session generating at the same moment (its work is on the other nodes) is not touched; a
  replacement node joins, Serve starts the Speaker there, the failed session's next spoken turn
  is answered;
- an in-place update (``serve deploy`` of a changed config) while a turn runs: that turn
  finishes on the old version, new sessions get the new one (their session.created shows the
  new instructions), and the old session goes on.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from quillman.client import RealtimeClient
from quillman.loadtest.local_cluster import CPU_NODES, local_cluster
from quillman.loadtest.speech import spoken_question, word_error_rate
from quillman.server_process import ROOT, healthy

pytestmark = pytest.mark.e2e

PORT = 8005
URL = f"http://127.0.0.1:{PORT}"
WS_URL = f"ws://127.0.0.1:{PORT}/v1/realtime"
LONG_STORY = "Tell me a long story about a dragon and a knight."
UPDATED_INSTRUCTIONS = "You are the updated assistant. Answer in one short spoken sentence."


def deploy_config(folder, **session) -> str:
    """configs/cpu-nodes.yaml on this test's port, with ``session`` settings changed."""
    config = yaml.safe_load((ROOT / "configs" / "cpu-nodes.yaml").read_text())
    config["http_options"]["port"] = PORT
    config["applications"][0]["args"].setdefault("session", {}).update(session)
    path = folder / f"cpu-nodes-{len(session)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def wait_healthy(timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not healthy(URL):
        assert time.monotonic() < deadline, f"{URL} not healthy after {timeout_s:g} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-cluster")
    with local_cluster(folder) as cluster:
        cluster.start(CPU_NODES)
        cluster.deploy(deploy_config(folder))
        wait_healthy()
        yield cluster
    print(f"\ncluster logs: {folder}")


async def text_session(instructions: str | None = None) -> RealtimeClient:
    client = RealtimeClient(WS_URL)
    await client.connect({"output_modalities": ["text"], **({"instructions": instructions} if instructions else {})})
    return client


async def ask(client: RealtimeClient, text: str) -> None:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await client.send({"type": "response.create"})


def assert_answered(turn, question: str | None = None) -> None:
    assert turn.status == "completed" and not turn.errors, (turn.status, turn.errors)
    if question is not None:
        assert word_error_rate(question, turn.user_transcript or "") <= 0.34, turn.user_transcript
        assert turn.reply_audio_s > 0.3


async def test_stages_run_on_their_nodes_and_a_lost_node_fails_only_its_turns(cluster):
    assert cluster.replica_nodes() == {"Ingress": ["head"], "Transcriber": ["models"],
                                       "LanguageModel": ["models"], "Speaker": ["speech"]}
    question = "What is the capital of France?"
    async with RealtimeClient(WS_URL) as voice:
        # Head (socket, VAD) -> models (ASR, LLM) -> speech (TTS) -> head.
        assert_answered(await voice.talk(spoken_question(question), 24000), question)

        text = await text_session("Tell very long, detailed stories.")
        try:
            await ask(voice, LONG_STORY)
            while (await voice.next_event())["type"] != "response.output_audio.delta":
                pass  # speech is being synthesized on the speech node: it goes now
            await ask(text, LONG_STORY)
            await asyncio.to_thread(cluster.kill, "speech")
            lost, untouched = await asyncio.gather(voice.collect_turn(), text.collect_turn())
        finally:
            await text.close()
        assert lost.status == "failed", lost.response
        assert [e["code"] for e in lost.errors] == ["model_unavailable"], lost.errors
        assert lost.response["status_details"]["error"]["code"] == "model_unavailable"
        assert "speech synthesis" in lost.errors[0]["message"]
        assert_answered(untouched)
        assert len(untouched.reply_text.split()) > 10

        # A replacement node with the same resource (what KubeRay does for a lost pod).
        await asyncio.to_thread(cluster.add_workers, {"speech-2": CPU_NODES["speech"]})
        await asyncio.to_thread(wait_healthy)
        assert cluster.replica_nodes()["Speaker"] == ["speech-2"]
        question = "How many legs does a spider have?"
        assert_answered(await voice.talk(spoken_question(question), 24000), question)


async def test_an_in_place_update_lets_open_turns_finish_and_new_sessions_get_the_new_version(cluster):
    old = await text_session()
    try:
        old_instructions = old.session["instructions"]
        assert old_instructions != UPDATED_INSTRUCTIONS
        await ask(old, LONG_STORY)
        await old.wait_for("response.output_text.delta")
        await asyncio.to_thread(cluster.deploy, deploy_config(cluster.workdir, instructions=UPDATED_INSTRUCTIONS))
        assert_answered(await old.collect_turn())  # graceful: the turn ends on the old version

        deadline = time.monotonic() + 240
        while True:  # the proxy sends new sessions to the new Ingress once it runs
            new = await text_session()
            if new.session["instructions"] == UPDATED_INSTRUCTIONS:
                break
            await new.close()
            assert time.monotonic() < deadline, "the update did not reach new sessions"
            await asyncio.sleep(2)
        try:
            await ask(new, "What is the capital of France?")
            assert_answered(await new.collect_turn())
        finally:
            await new.close()

        # The old session is still on its (draining) Ingress with its own settings, answered by
        # the new model replicas.
        await ask(old, "Thank you. Say that again, shorter.")
        assert_answered(await old.collect_turn())
        assert old.session["instructions"] == old_instructions
    finally:
        await old.close()
