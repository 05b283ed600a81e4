"""PlaybackBuffer: what a media track played, and the output_audio_buffer.* events it reports."""

from __future__ import annotations

import numpy as np

from quillman import protocol
from quillman.pipeline.playback import Cut, PlaybackBuffer


def delta(response_id: str, item_id: str, samples: int, rate: int = 48000) -> protocol.OutputAudioDelta:
    return protocol.OutputAudioDelta.of(np.full(samples, 100, np.int16), "audio/pcm", rate,
                                        response_id=response_id, item_id=item_id)


def kinds(events) -> list[tuple[str, str]]:
    return [(e.type, e.response_id) for e in events]


def test_started_on_the_first_audio_stopped_once_drained_after_finish():
    events = []
    buffer = PlaybackBuffer(events.append)
    buffer.play(delta("r1", "i1", 1500))
    assert kinds(events) == [("output_audio_buffer.started", "r1")]  # before its response.done
    buffer.play(delta("r1", "i1", 0))
    assert buffer.take(960).min() == 100 and len(events) == 1
    buffer.response_finished("r1")
    tail = buffer.take(960)
    assert (tail[:540] == 100).all() and (tail[540:] == 0).all()  # then silence
    assert kinds(events)[-1] == ("output_audio_buffer.stopped", "r1")
    assert buffer.take(960).max() == 0 and len(events) == 2


def test_not_stopped_before_the_response_is_done():
    events = []
    buffer = PlaybackBuffer(events.append)
    buffer.play(delta("r1", "i1", 960))
    buffer.take(960)
    buffer.take(960)  # an underrun while TTS works: still the same reply
    assert kinds(events) == [("output_audio_buffer.started", "r1")]


def test_resampled_to_the_track_rate_as_one_stream():
    buffer = PlaybackBuffer(lambda e: None)
    for _ in range(4):  # 4 x 50 ms at 24 kHz
        buffer.play(delta("r1", "i1", 1200, rate=24000))
    buffer.response_finished("r1")  # flushes the resampler's tail
    assert abs(buffer.queued_samples - 9600) <= 2
    played = np.concatenate([buffer.take(960) for _ in range(10)])
    assert np.abs(played[200:9400].astype(int) - 100).max() <= 2  # no clicks between chunks


def test_clear_cuts_at_the_played_position_and_drops_later_audio():
    events = []
    buffer = PlaybackBuffer(events.append)
    buffer.play(delta("r1", "i1", 48000))  # 1 s
    for _ in range(25):  # 500 ms played
        buffer.take(960)
    cuts = buffer.clear()
    assert cuts == [Cut("r1", "i1", 500)]
    assert kinds(events)[-1] == ("output_audio_buffer.cleared", "r1")
    buffer.play(delta("r1", "i1", 960))  # late audio of the cut reply
    assert buffer.take(960).max() == 0 and not buffer.playing


def test_clear_with_nothing_playing_reports_nothing():
    events = []
    buffer = PlaybackBuffer(events.append)
    assert buffer.clear() == [] and events == []


def test_a_generating_reply_with_an_empty_queue_is_cut_too():
    events = []
    buffer = PlaybackBuffer(events.append)
    buffer.play(delta("r1", "i1", 960))
    buffer.take(960)  # all played, more to come
    assert buffer.clear() == [Cut("r1", "i1", 20)]
    assert kinds(events) == [("output_audio_buffer.started", "r1"), ("output_audio_buffer.cleared", "r1")]
