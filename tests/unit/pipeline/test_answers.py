"""The server's answer tuning reaches the prompt: example exchanges and repetition penalty."""

from __future__ import annotations

from quillman.config import SessionConfig


async def test_the_examples_follow_the_servers_instructions_only(make_driver, backends, session_config):
    config = session_config(few_shot=[("What is 1 plus 1?", "One plus one is two.")])
    driver = await make_driver(config)
    await driver.text_turn("Hi there")
    messages = backends.llm_calls[0].args["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "One plus one is two." and messages[3]["content"] == "Hi there"
    assert backends.llm_calls[0].args["params"].repeat_penalty > 1.0  # the server's default
    # A client's own instructions replace the server's prompt, examples included.
    await driver.text_turn("Hello again", instructions="Answer like a pirate.")
    assert not any(m["content"] == "One plus one is two." for m in backends.llm_calls[1].args["messages"])


def test_the_default_has_examples():
    assert len(SessionConfig().few_shot) >= 2
