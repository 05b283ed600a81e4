"""The replayed-answer judge of ``quillman bench replay``."""

from quillman_bench.replay import TOPICS, Conversation, judge

TOPIC_WORDS = dict(TOPICS)
FRANCE, MOON = "What is the capital city of France?", "Tell me a short fact about the moon."


def judged(reply1: str, reply2: str) -> Conversation:
    conversation = Conversation(FRANCE, MOON, overlapped=True, reply1=reply1, reply2=reply2)
    judge(conversation, TOPIC_WORDS)
    return conversation


def test_the_earlier_answer_again_is_a_replay():
    c = judged("The capital city of France is Paris.", "The capital city of France is Paris.")
    assert c.replayed and not c.on_topic


def test_an_answer_to_the_first_question_in_other_words_is_a_replay():
    assert judged("Paris.", "It is Paris, in France.").replayed


def test_an_answer_about_the_second_question_is_not():
    c = judged("The capital city of France is Paris.", "The moon is the only natural satellite of Earth.")
    assert c.on_topic and not c.replayed


def test_a_wrong_answer_about_neither_is_not_a_replay_but_off_topic():
    c = judged("The capital city of France is Paris.", "I like trains.")
    assert not c.replayed and not c.on_topic
