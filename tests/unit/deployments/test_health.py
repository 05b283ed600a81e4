"""Serve's record of a failed deployment, turned into what /healthz, /prewarm and the log say."""

from __future__ import annotations

import logging

from quillman.deployments.health import DeploymentState, DeploymentWatch, failure_report, plain_reason

SERVE_MESSAGE = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its constructor "
    "or initial health check failing. See controller logs for details. Error:\n"
    "ray::ServeReplica:quillman:LanguageModel.initialize_and_get_metadata() (pid=8778, ip=192.0.2.2, "
    "actor_id=300b9f4b393770935d53b70a01000000, repr=<ray.serve._private.replica.ServeReplica object at 0x7f>)\n"
    "Traceback (most recent call last):\n  File \"/x/llama.py\", line 1, in __init__\n"
    "ValueError: Failed to load model from file: /tmp/broken.gguf\n")


def test_the_reason_keeps_serves_summary_and_the_last_error_without_ray_internals():
    reason = plain_reason(SERVE_MESSAGE)
    assert reason.startswith("The deployment failed to start 3 times in a row.")
    assert reason.endswith("Last error: ValueError: Failed to load model from file: /tmp/broken.gguf")
    for internal in ("pid=", "192.0.2.2", "actor_id", "Traceback", "0x7f"):
        assert internal not in reason
    assert plain_reason("") == "no reason recorded"
    assert plain_reason("The actor died unexpectedly.") == "The actor died unexpectedly."


def test_the_report_names_the_role_and_what_to_run():
    report = failure_report("LanguageModel", DeploymentState("DEPLOY_FAILED", SERVE_MESSAGE))
    assert report["status"] == "failed" and report["serve_status"] == "DEPLOY_FAILED"
    assert report["role"] == "the language model"
    assert report["error"].startswith("the language model failed to start (LanguageModel: DEPLOY_FAILED): ")
    assert report["error"].endswith("run `quillman doctor` on the server to see why")


async def test_the_watch_caches_reads_and_logs_each_failure_once(caplog):
    reads = []
    states = {"LanguageModel": DeploymentState("UPDATING"), "Speaker": DeploymentState("HEALTHY")}

    def read():
        reads.append(1)
        return dict(states)

    watch = DeploymentWatch(read, max_age_s=0.0)
    assert await watch.failures() == {}
    states["LanguageModel"] = DeploymentState("DEPLOY_FAILED", SERVE_MESSAGE)
    with caplog.at_level(logging.ERROR, logger="quillman.deployments.health"):
        for _ in range(3):
            failures = await watch.failures()
    assert list(failures) == ["LanguageModel"]
    logged = [r for r in caplog.records if "failed to start" in r.getMessage()]
    assert len(logged) == 1 and "quillman doctor" in logged[0].getMessage()

    cached = DeploymentWatch(read, max_age_s=60.0)
    before = len(reads)
    await cached.states()
    await cached.states()
    assert len(reads) == before + 1


async def test_a_controller_that_does_not_answer_keeps_the_last_record():
    calls = []

    def read():
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("controller restarting")
        return {"Speaker": DeploymentState("HEALTHY")}

    watch = DeploymentWatch(read, max_age_s=0.0)
    assert (await watch.states())["Speaker"].status == "HEALTHY"
    assert (await watch.states())["Speaker"].status == "HEALTHY"


def test_a_stage_is_unavailable_only_when_failed_with_nothing_running():
    assert DeploymentState("UNHEALTHY", replicas=0).unavailable  # its node was lost
    assert DeploymentState("DEPLOY_FAILED", replicas=0).unavailable
    assert not DeploymentState("UNHEALTHY", replicas=1).unavailable  # Serve retries on the other
    assert not DeploymentState("UPDATING", replicas=0).unavailable  # a rolling update's short gap
    assert not DeploymentState("HEALTHY", replicas=1).unavailable
