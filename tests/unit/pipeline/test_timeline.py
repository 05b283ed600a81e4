"""The audio timeline: slicing whatever the chunking, trimming, bounded memory."""

from __future__ import annotations

import numpy as np

from quillman.pipeline.timeline import AudioTimeline

RATE = 16000


def test_timeline_slices_like_one_array_whatever_the_chunking():
    rng = np.random.default_rng(0)
    timeline, reference = AudioTimeline(keep_s=1000), []
    for i in range(300):
        chunk = rng.standard_normal(int(rng.integers(1, 900))).astype(np.float32)
        timeline.append(chunk, arrived=float(i))
        reference.append(chunk)
    whole = np.concatenate(reference)
    assert timeline.end == len(whole)
    for _ in range(200):
        a, b = sorted(rng.integers(0, len(whole) + 1, size=2))
        np.testing.assert_array_equal(timeline.slice(a, b), whole[a:b])


def test_trimmed_audio_is_gone_and_the_rest_still_slices_right():
    timeline = AudioTimeline(keep_s=1000)
    whole = np.arange(100_000, dtype=np.float32)
    for start in range(0, len(whole), 1000):
        timeline.append(whole[start:start + 1000], arrived=start / 1000)
    timeline.trim_before(45_500)
    assert timeline.start == 45_500
    np.testing.assert_array_equal(timeline.slice(40_000, 46_000), whole[45_500:46_000])
    np.testing.assert_array_equal(timeline.slice(90_000, 200_000), whole[90_000:])
    assert len(timeline.slice(0, 45_000)) == 0
    for cut in range(46_000, 100_000, 997):  # many trims: compaction keeps indexes right
        timeline.trim_before(cut)
        np.testing.assert_array_equal(timeline.slice(cut, cut + 1500), whole[cut:cut + 1500])
    assert timeline.arrival_of(99_999) == 99.0


def test_appends_do_not_join_what_came_before():
    """O(1) appends: the stored chunks stay as they came (no re-concatenation per append)."""
    timeline = AudioTimeline(keep_s=1000)
    chunks = [np.full(320, i, dtype=np.float32) for i in range(2000)]
    for i, chunk in enumerate(chunks):
        timeline.append(chunk, arrived=float(i))
        timeline.slice(timeline.end - 640, timeline.end)  # the VAD's read of the newest audio
    assert all(stored is original for stored, original in zip(timeline._chunks, chunks))


def test_timeline_keeps_at_most_keep_s():
    timeline = AudioTimeline(keep_s=1.0)
    for i in range(100):
        timeline.append(np.zeros(1600, np.float32), arrived=float(i))
        timeline.trim_before(0)
    assert timeline.end - timeline.start <= RATE
