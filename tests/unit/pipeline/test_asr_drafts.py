"""The segment's ASR from the first silence (``vad.early_asr_ms``), session level.

At ``early_asr_ms`` of silence the open segment is sent to ASR; if the silence becomes the pause
(``pause_ms``), that transcript is the segment's and no second ASR of it runs; if speech comes
back first, the draft is cancelled and the speech goes on into the segment.
"""

from __future__ import annotations

from quillman.config import VadConfig

DRAFTS = VadConfig(early_asr_ms=64)  # the shipped default: drafts on


async def test_the_draft_at_the_first_silence_is_the_segments_transcript(make_driver, backends, phrases_24k, make_clip):
    backends.transcripts = ["what is the capital of france"]
    driver = await make_driver(vad_config=DRAFTS)
    clip = make_clip([phrases_24k[0]], 24000, 0.3, [], 1.0)
    await driver.append(clip.pcm)
    await driver.wait_for("response.done")
    completed = driver.of_type("conversation.item.input_audio_transcription.completed")
    assert [e["transcript"] for e in completed] == ["what is the capital of france"]
    kept = [call for call in backends.asr_calls if call.completed and not call.cancelled]
    assert len(kept) == 1  # the draft: the segment was not transcribed again at the pause
    # It was cut at the first silence: before the pause (192 ms after the speech) was confirmed.
    speech_s = (clip.phrases[0][1] - clip.phrases[0][0]) / 24000
    drafted_s = len(kept[0].args["pcm"]) / 16000
    assert drafted_s < 0.3 + speech_s + DRAFTS.pause_ms / 1000


async def test_a_draft_that_speech_breaks_is_cancelled_and_the_segment_transcribed_whole(
        make_driver, backends, phrases_24k, make_clip):
    # Two phrases 120 ms apart: longer than early_asr_ms, shorter than the pause.
    backends.asr_hang = True  # the draft is still running when speech comes back
    driver = await make_driver(vad_config=DRAFTS)
    a, b = phrases_24k
    clip = make_clip([a, b], 24000, 0.3, [0.12], 1.0)
    await driver.append(clip.pcm)
    await driver.wait_for("input_audio_buffer.committed")
    backends.asr_release.set()
    await driver.wait_for("response.done")
    broken = [call for call in backends.asr_calls if call.cancelled]
    assert broken, "the draft at the 120 ms gap was not cancelled"
    kept = [call for call in backends.asr_calls if call.completed]
    # The transcript the turn used covers both phrases.
    longest_s = max(len(call.args["pcm"]) for call in kept) / 16000
    assert longest_s > (clip.phrases[1][1] - clip.phrases[0][0]) / 24000
    assert len(driver.of_type("response.done")) == 1


async def test_no_draft_when_early_asr_is_off(make_driver, backends, phrases_24k, make_clip):
    driver = await make_driver(vad_config=VadConfig(early_asr_ms=0))
    clip = make_clip([phrases_24k[0]], 24000, 0.3, [], 1.0)
    await driver.append(clip.pcm)
    await driver.wait_for("response.done")
    assert len(backends.asr_calls) == 1 and not backends.asr_calls[0].cancelled
    # Cut at the pause: the segment holds the pause's silence too.
    assert len(backends.asr_calls[0].args["pcm"]) / 16000 > (clip.phrases[0][1] / 24000) + 0.15
