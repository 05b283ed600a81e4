"""The application on a three-node Ray cluster, deployed the way KubeRay and Anyscale deploy it.

``ray start --head`` and two ``ray start --address`` worker nodes on this machine (token
authentication on, as Ray 2.60 sets it up), ``serve deploy configs/cpu-nodes.yaml``: the Ingress on
the head, Transcriber and LanguageModel on the "models" node, the Speaker on the "speech" node,
pinned by custom resources (quillman_bench/cluster.py has the scenarios). Then:

- a worker node is lost mid-turn (SIGKILL to all its processes): the spoken reply whose speech
  was being synthesized there ends ``failed`` with ``model_unavailable``; a text-only session
  generating at the same moment (its work is on the other nodes) is not touched; a replacement
  node joins, Serve starts the Speaker there, the failed session's next spoken turn is answered;
- an in-place update (``serve deploy`` of a changed config) while a turn runs: that turn
  finishes (graceful shutdown of the old version), new sessions get the new version (their
  session.created shows the new instructions), and the old session goes on.
"""

from __future__ import annotations

import pytest

from quillman_bench.cluster import (UPDATED_INSTRUCTIONS, deploy_config, lose_the_speech_node,
                                       update_in_place, wait_healthy)
from quillman_bench.local_cluster import CPU_NODES, local_cluster
from quillman_bench.speech import word_error_rate

pytestmark = pytest.mark.e2e

PORT = 8005
URL = f"http://127.0.0.1:{PORT}"
WS_URL = f"ws://127.0.0.1:{PORT}/v1/realtime"
QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-cluster")
    with local_cluster(folder) as cluster:
        cluster.start(CPU_NODES)
        cluster.deploy(deploy_config(folder, PORT))
        wait_healthy(URL)
        yield cluster
    print(f"\ncluster logs: {folder}")


def assert_answered(turn, question: str | None = None) -> None:
    assert turn.status == "completed" and not turn.errors, (turn.status, turn.errors)
    if question is not None:
        assert word_error_rate(question, turn.user_transcript or "") <= 0.34, turn.user_transcript
        assert turn.reply_audio_s > 0.3


async def test_stages_run_on_their_nodes_and_a_lost_node_fails_only_its_turns(cluster):
    assert cluster.replica_nodes() == {"Ingress": ["head"], "Transcriber": ["models"],
                                       "LanguageModel": ["models"], "Speaker": ["speech"]}
    loss = await lose_the_speech_node(cluster, WS_URL, URL, QUESTIONS)
    assert_answered(loss.before, QUESTIONS[0])  # head -> models -> speech -> head

    assert loss.lost.status == "failed", loss.lost.response
    assert [e["code"] for e in loss.lost.errors] == ["model_unavailable"], loss.lost.errors
    assert loss.lost.response["status_details"]["error"]["code"] == "model_unavailable"
    assert "speech synthesis" in loss.lost.errors[0]["message"]
    assert_answered(loss.untouched)
    assert len(loss.untouched.reply_text.split()) > 10

    assert loss.speaker_nodes and set(loss.speaker_nodes) == {"speech-2"}  # autoscaling may add one
    assert_answered(loss.after, QUESTIONS[1])
    print(f"\nnode lost: turn failed after {loss.failed_after_s:.1f} s, "
          f"replacement healthy after {loss.replaced_after_s:.1f} s")


async def test_an_in_place_update_lets_open_turns_finish_and_new_sessions_get_the_new_version(cluster):
    update = await update_in_place(cluster, WS_URL, deploy_config(cluster.workdir, PORT,
                                                                  instructions=UPDATED_INSTRUCTIONS))
    assert update.old_instructions != UPDATED_INSTRUCTIONS
    assert_answered(update.open_turn)  # graceful: the turn ends on the old version
    assert_answered(update.new_turn)
    # The old session is still on its draining Ingress with its own settings, answered by the
    # new model replicas.
    assert_answered(update.old_next_turn)
    assert update.old_instructions_after == update.old_instructions
    print(f"\nupdate: new sessions on the new version after {update.new_version_after_s:.1f} s")
