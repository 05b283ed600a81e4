"""Turn taking replayed in audio time: ``quillman bench turns``.

The labeled set (``data/turn_set.json``: complete utterances, mid-sentence pauses, fillers, list
continuations, each spoken by every voice, split once into a tuning and a test half) goes
through the server's own :class:`~quillman.pipeline.turns.TurnTracker` with the real Silero
VAD, faster-whisper and Smart Turn, offline, on a simulated clock: the audio's own time, fed in
20 ms frames. Nothing depends on how busy the machine is:

* every pause is transcribed and scored for real; each model call's cost is its CPU time
  (``time.process_time``, one thread: about its wall time on an idle core), measured once and
  cached with its result (``$QUILLMAN_CACHE_DIR/turn-bench``);
* a judgment started at a pause is due at the pause + what it waits on: ``parallel`` (the
  server: Smart Turn starts at the pause beside the ASR of the last segment; the decision is
  due when the transcript is, or when Smart Turn is if the text leaves it a say and it is
  later) or ``serial`` (the transcript first, then Smart Turn when needed: the design before);
  speech that resumes before it is due cancels it, as in the session;
* the ASR of each segment starts when it is cut (two transcriber replicas: segments do not
  queue behind each other).

Per utterance: *false endpoint*: a turn ended before its last word (at a mid-utterance pause);
*late endpoint*: its end decided more than 1 s after its last speech sample; *end latency*:
last speech sample -> the turn ended, of which *model wait* is the part spent waiting for the
models after the pause was detected. ``semantic_vad`` (the server's rule; ``--policies``
adds the rule before issue 22, ``legacy``) and ``server_vad`` (500 ms), same audio.

  quillman bench turns --markdown                     # both halves, all policies
  quillman bench turns --split tune --explain         # what went wrong on the tuning half
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quillman.audio import resample
from quillman.config import VadConfig
from quillman.engines.cache import model_cache_dir
from quillman_bench.report import dict_table, percentile
from quillman.pipeline import semantic, turn_text
from quillman.pipeline.turns import (
    DraftDropped,
    SegmentCut,
    SegmentDraft,
    SpeechEnded,
    TurnCommitted,
    TurnResumed,
    TurnStarted,
    TurnTracker,
)

RATE_HZ = 16000
FRAME = 320  # 20 ms
LEAD_S, TRAIL_S = 0.5, 4.6  # silence before, and after (past the 4 s cap)
LATE_S = 1.0
DATA = Path(__file__).parent / "data" / "turn_set.json"
CASES = ("complete", "paused", "filler", "list")
SEMANTIC = VadConfig(type="semantic_vad", eagerness="auto")
SERVER = VadConfig(type="server_vad", silence_duration_ms=500)


# --- the labeled set -------------------------------------------------------------------------------

@dataclass
class Clip:
    id: str
    case: str
    split: str
    voice: str
    text: str
    pcm: np.ndarray  # int16 at 16 kHz: lead silence, the parts joined by pauses, trailing silence
    speech_end: int  # sample after the last speech sample
    pauses: list[tuple[int, int]] = field(default_factory=list)  # labeled mid-utterance pauses


def load_set(path: Path = DATA) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _cache_dir(kind: str) -> Path:
    path = model_cache_dir() / "turn-bench" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def _piper(length_scale: float):
    from quillman.engines.tts.piper import PiperSynthesizer

    return PiperSynthesizer("joe", threads=1, length_scale=length_scale)


def speak(text: str, voice: dict[str, Any]) -> np.ndarray:
    """``text`` in ``voice`` (a voice of the data file), int16 at 16 kHz, trimmed (cached)."""
    key = hashlib.sha1(json.dumps([text, voice], sort_keys=True).encode()).hexdigest()[:20]
    path = _cache_dir("speech") / f"{key}.npy"
    if path.exists():
        return np.load(path)
    if voice["engine"] == "piper":
        chunks = list(_piper(float(voice["rate"])).synthesize(text))
        pcm = resample(np.concatenate([c.pcm for c in chunks]), chunks[0].sample_rate_hz, RATE_HZ)
    else:
        from quillman_bench.speech import espeak

        pcm = espeak(text, RATE_HZ, words_per_minute=voice["rate"], voice=voice["voice"], pitch=voice["pitch"])
    pcm = _trim(pcm)
    np.save(path, pcm)
    return pcm


def _trim(pcm: np.ndarray, level: int = 300) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm


def clips(data: dict[str, Any], splits: set[str], voices: list[int] | None = None) -> list[Clip]:
    pause = np.zeros(int(data["pause_ms"] * RATE_HZ / 1000), dtype=np.int16)
    out = []
    for v, voice in enumerate(data["voices"]):
        if voices is not None and v not in voices:
            continue
        for u in data["utterances"]:
            if u["split"] not in splits:
                continue
            pieces, pauses, at = [np.zeros(int(LEAD_S * RATE_HZ), dtype=np.int16)], [], int(LEAD_S * RATE_HZ)
            for i, part in enumerate(u["parts"]):
                if i:
                    pieces.append(pause)
                    pauses.append((at, at + len(pause)))
                    at += len(pause)
                speech = speak(part, voice)
                pieces.append(speech)
                at += len(speech)
            pieces.append(np.zeros(int(TRAIL_S * RATE_HZ), dtype=np.int16))
            out.append(Clip(u["id"], u["case"], u["split"], voice["name"], " ... ".join(u["parts"]),
                            np.concatenate(pieces), at, pauses))
    return out


# --- the models, measured once ------------------------------------------------------------------

class Models:
    """faster-whisper (the server's ASR settings, one thread) and Smart Turn, each call's result
    and CPU time cached on disk by the audio's hash."""

    def __init__(self, config_path: str = "serve_config.yaml", fresh: bool = False):
        from quillman.doctor import load_app_config
        from quillman.engines.loader import load_recognizer
        from quillman.engines.smart_turn import SmartTurn
        from quillman.engines.vad import SileroVad

        asr = load_app_config(config_path).asr.model_copy(update={"cpu_threads": 1})
        self.asr_name = f"{asr.backend}-{asr.model}-{asr.compute_type}-{asr.encoder_window}-b{asr.beam_size}"
        self._recognizer = load_recognizer(asr)
        self._language = asr.language
        self._smart_turn = SmartTurn(threads=1)
        self._smart_turn.probability(np.zeros(RATE_HZ, dtype=np.float32))  # warm-up
        self._recognizer.transcribe(np.zeros(RATE_HZ, dtype=np.float32), self._language)
        self.make_vad = SileroVad
        self._path = _cache_dir("results") / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', self.asr_name)}.json"
        self._cache: dict[str, list] = {} if fresh or not self._path.exists() else json.loads(self._path.read_text())
        self._dirty = 0

    def _cached(self, kind: str, pcm: np.ndarray, run: Callable[[np.ndarray], Any]) -> tuple[Any, float]:
        key = kind + ":" + hashlib.sha1(np.ascontiguousarray(pcm, dtype=np.float32).tobytes()).hexdigest()
        if key not in self._cache:
            start = time.process_time()
            value = run(pcm)
            self._cache[key] = [value, round((time.process_time() - start) * 1000, 1)]
            self._dirty += 1
            if self._dirty >= 50:
                self.save()
        value, cost_ms = self._cache[key]
        return value, cost_ms

    def transcribe(self, pcm: np.ndarray) -> tuple[str, float | None, float]:
        """The text, the ASR's confidence in its last words and the call's CPU ms."""
        (text, confidence), cost_ms = self._cached("asr-heard", pcm, self._heard)
        return text, confidence, cost_ms

    def _heard(self, pcm: np.ndarray) -> list:
        transcript = self._recognizer.transcribe(pcm, self._language)
        return [transcript.text.strip(), transcript.end_confidence]

    def probability(self, pcm: np.ndarray) -> tuple[float, float]:
        return self._cached("smart_turn", pcm, lambda x: round(self._smart_turn.probability(x), 4))

    def save(self) -> None:
        if self._dirty:
            self._path.write_text(json.dumps(self._cache))
            self._dirty = 0


# --- the policies -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judged:
    decision: semantic.Decision
    needs_audio: bool
    reading: str  # what the text rule said (for --explain)


def _server_policy(text: str, confidence: float | None, p: float) -> Judged:
    reading = turn_text.read_text(text, confidence)
    return Judged(semantic.decide(reading, p, SEMANTIC), semantic.needs_audio(reading),
                  f"{reading.cue}: {reading.why}")


# The rule before issue 22 (f491aa6), frozen here for the comparison: dangling last word ->
# unfinished, final mark -> finished, Smart Turn (p >= 0.5) where the text had no cue; an
# unfinished judgment waited for the cap.
_LEGACY_DANGLING = frozenset("""a an the my your his her our their its of to for with from at by into than
and or but so because if when while then is are was were um uh er erm hmm mm""".split())


def _legacy_policy(text: str, confidence: float | None, p: float) -> Judged:
    text = text.strip()
    words = re.findall(r"[a-z']+", text.lower())
    cue = None
    if text.endswith(("...", "…", ",", "-", "—", ":", ";")):
        cue = False
    elif words and (words[-1] in _LEGACY_DANGLING or re.match(
            r"^(what|where|when|why|how|who|which)\s+(do|does|did|can|could|will|would|should)\s+\S+$",
            " ".join(words))):
        cue = False
    elif text and text[-1] in ".?!":
        cue = True
    if cue is None:
        return Judged(semantic.Decision(p >= 0.5, "audio", p), True, "no cue")  # Smart Turn's threshold
    return Judged(semantic.Decision(cue, "text", None), False, str(cue))


POLICIES: dict[str, Callable[[str, float | None, float], Judged]] = {"semantic_vad": _server_policy, "legacy": _legacy_policy}


# --- the replay -------------------------------------------------------------------------------------

@dataclass
class _Pending:
    due: float
    turn: Any
    judged: Judged
    record: dict[str, Any]


async def replay(clip: Clip, models: Models, mode: str, schedule: str = "parallel") -> dict[str, Any]:
    """One clip through the tracker under ``mode`` (a policy name or ``server_vad``)."""
    vad = SERVER if mode == "server_vad" else SEMANTIC
    policy = POLICIES.get(mode)
    tracker = TurnTracker(models.make_vad, vad, RATE_HZ, max_turn_s=60.0)
    # per turn: (ready at, text, end confidence) of its segments
    texts: dict[str, list[tuple[float, str, float | None]]] = {}
    drafts: dict[str, tuple[float, str, float | None]] = {}  # per turn: the open segment's ASR since the first silence
    pending: list[_Pending] = []
    commits: list[dict[str, Any]] = []
    judgments: list[dict[str, Any]] = []
    decisions: dict[str, semantic.Decision] = {}  # per turn: its last applied judgment (the session's VoiceTurn)

    def on_events(events: list, now: float) -> None:
        for event in events:
            match event:
                case TurnStarted(turn=turn):
                    texts[turn.item_id] = []
                case SegmentDraft(turn=turn, pcm=pieces) if policy is not None and len(pieces) == 1:
                    text, confidence, cost = models.transcribe(pieces[0])
                    drafts[turn.item_id] = (now + cost / 1000, text, confidence)
                case DraftDropped(turn=turn):
                    drafts.pop(turn.item_id, None)
                case SegmentCut(turn=turn, pcm=pieces, pause=pause, drafted=drafted) if policy is not None:
                    draft = drafts.pop(turn.item_id, None)
                    if drafted and draft is not None:  # as the session: the draft is the segment
                        texts[turn.item_id].append(draft)
                        pieces_asr: list[np.ndarray] = []
                    else:
                        pieces_asr = pieces
                    for piece in pieces_asr:
                        text, confidence, cost = models.transcribe(piece)
                        texts[turn.item_id].append((now + cost / 1000, text, confidence))
                    if pause:
                        pending.append(_judge(turn, pieces, now))
                case TurnResumed(turn=turn):
                    pending[:] = [j for j in pending if j.turn is not turn]
                case TurnCommitted(turn=turn, reason=reason):
                    commits.append({"t": now, "reason": reason, "waited": turn.waited,
                                    "decision": decisions.get(turn.item_id)})
                case SpeechEnded():
                    pass

    def _judge(turn, pieces: list[np.ndarray], now: float) -> _Pending:
        segments = texts[turn.item_id]
        spoken = [(t.strip(), confidence) for _, t, confidence in segments if t.strip()]
        text = " ".join(t for t, _ in spoken)
        confidence = spoken[-1][1] if spoken else None  # the session's: the last spoken segment's
        # A draft's transcript may be ready before the pause; the judgment starts at the pause.
        text_ready = max([now, *(ready for ready, _, _ in segments)])
        pcm = np.concatenate(pieces)
        p, audio_cost = models.probability(pcm)
        judged = policy(text, confidence, p)
        if not judged.needs_audio:
            due = text_ready
        elif schedule == "parallel":
            due = max(text_ready, now + audio_cost / 1000)
        else:
            due = text_ready + audio_cost / 1000
        record = {"at_ms": round(now * 1000), "point": "end" if now * RATE_HZ >= clip.speech_end else "mid",
                  "transcript": text, "end_confidence": confidence, "smart_turn": p, "reading": judged.reading,
                  "complete": judged.decision.complete, "wait_ms": judged.decision.wait_ms,
                  "signal": judged.decision.signal, "wait_for_models_ms": round((due - now) * 1000, 1),
                  "asr_ms": round((text_ready - now) * 1000, 1), "smart_turn_ms": audio_cost}
        judgments.append(record)
        return _Pending(due, turn, judged, record)

    for start in range(0, len(clip.pcm), FRAME):
        arrived = (start + FRAME) / RATE_HZ
        for job in [j for j in pending if j.due < arrived]:
            pending.remove(job)
            turn = job.turn
            decisions[turn.item_id] = job.judged.decision
            job.record["applied"] = True
            if job.judged.decision.wait_ms is not None:
                on_events(tracker.end_turn_after(turn, job.judged.decision.wait_ms), job.due)
            elif job.judged.decision.complete:
                on_events(tracker.end_turn(turn), job.due)
        on_events(await tracker.append(clip.pcm[start:start + FRAME], arrived), arrived)
    return _outcome(clip, mode, schedule, commits, judgments)


def _outcome(clip: Clip, mode: str, schedule: str, commits: list[dict], judgments: list[dict]) -> dict[str, Any]:
    end_s = clip.speech_end / RATE_HZ
    early = [c for c in commits if c["t"] < end_s]
    final = next((c for c in commits if c["t"] >= end_s), None)
    latency = None if final is None else round((final["t"] - end_s) * 1000, 1)
    decided_by = None
    if final is not None:
        decision = final["decision"]
        decided_by = ("silence" if mode == "server_vad" else
                      semantic.end_signal(SEMANTIC, final["reason"], decision, final["waited"]))
    model_wait = heard = None  # for a turn a judgment ended: the models' part, the pause's part
    if final is not None and decided_by not in ("silence", "short_wait", "max_wait"):
        applied = [j for j in judgments if j.get("applied") and j["complete"]]
        if applied:
            model_wait = applied[-1]["wait_for_models_ms"]
            heard = round(applied[-1]["at_ms"] - end_s * 1000, 1)
    return {"id": clip.id, "case": clip.case, "split": clip.split, "voice": clip.voice, "text": clip.text,
            "mode": mode, "schedule": schedule, "turns": len(commits),
            "false_endpoint": bool(early), "end_ms": latency,
            "late": latency is None or latency > LATE_S * 1000, "decided_by": decided_by,
            "pause_detected_ms": heard, "model_wait_ms": model_wait, "judgments": judgments}


# --- the report --------------------------------------------------------------------------------------

def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = list(dict.fromkeys((r["split"], r["mode"], r["schedule"]) for r in rows))
    for split, mode, schedule in keys:
        for case in (*CASES, "all"):
            subset = [r for r in rows if (r["split"], r["mode"], r["schedule"]) == (split, mode, schedule)
                      and (case == "all" or r["case"] == case)]
            if not subset:
                continue
            ends = [r["end_ms"] for r in subset if r["end_ms"] is not None]
            waits = [r["model_wait_ms"] for r in subset if r["model_wait_ms"] is not None]
            heard = [r["pause_detected_ms"] for r in subset if r["pause_detected_ms"] is not None]
            by = Counter(str(r["decided_by"]) for r in subset)
            out.append({
                "split": split, "mode": mode if mode == "server_vad" else f"{mode} ({schedule})", "case": case,
                "n": len(subset),
                "false_endpoints": _share(sum(r["false_endpoint"] for r in subset), len(subset)),
                "late_endpoints": _share(sum(r["late"] for r in subset), len(subset)),
                "end_p50_ms": percentile(ends, 50), "end_p95_ms": percentile(ends, 95),
                "pause_detected_p50_ms": percentile(heard, 50) if heard else None,
                "model_wait_p50_ms": percentile(waits, 50) if waits else None,
                "model_wait_p95_ms": percentile(waits, 95) if waits else None,
                "decided_by": ", ".join(f"{k} {v}" for k, v in sorted(by.items())),
            })
    return out


def _share(count: int, n: int) -> str:
    return f"{count}/{n} ({100 * count / n:.0f} %)"


def costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The models' measured cost per call (CPU ms), over every judgment of the replay."""
    judged = [j for r in rows if r["mode"] != "server_vad" for j in r["judgments"]]
    asr = [j["asr_ms"] for j in judged]
    st = [j["smart_turn_ms"] for j in judged]
    return {"judgments": len(judged),
            "asr_wait_p50_ms": percentile(asr, 50), "asr_wait_p95_ms": percentile(asr, 95),
            "smart_turn_p50_ms": percentile(st, 50), "smart_turn_p95_ms": percentile(st, 95)}


def markdown_report(table: list[dict[str, Any]], cost: dict[str, Any]) -> str:
    """One table per half (test first), then the models' measured cost per call."""
    out = []
    for split, title in (("test", "Test half"), ("tune", "Tuning half (the rules and thresholds were tuned here)")):
        part = [{k: v for k, v in r.items() if k != "split"} for r in table if r["split"] == split]
        if part:
            out += [f"**{title}**", "", dict_table(part), ""]
    out.append(f"Model cost per call (CPU ms, one thread, p50 / p95): ASR of the last segment "
               f"{cost['asr_wait_p50_ms']} / {cost['asr_wait_p95_ms']}, Smart Turn {cost['smart_turn_p50_ms']} / "
               f"{cost['smart_turn_p95_ms']} ({cost['judgments']} judgments).")
    return "\n".join(out)


def explain(rows: list[dict[str, Any]]) -> str:
    """Every false or late endpoint, with what each judgment saw."""
    lines = []
    for r in rows:
        if r["mode"] == "server_vad" or not (r["false_endpoint"] or r["late"]):
            continue
        what = "FALSE" if r["false_endpoint"] else "LATE"
        lines.append(f"{what} {r['mode']} {r['id']} [{r['voice']}] {r['text']!r} end={r['end_ms']} by={r['decided_by']}")
        for j in r["judgments"]:
            lines.append(f"    @{j['at_ms']}ms {j['transcript']!r} conf={j['end_confidence']} st={j['smart_turn']} -> {j['reading']} "
                         f"| complete={j['complete']} wait={j['wait_ms']} {j['signal']}")
    return "\n".join(lines)


async def run(clip_list: list[Clip], models: Models, modes: list[str], schedules: list[str],
              progress: bool = True) -> list[dict[str, Any]]:
    rows = []
    for i, clip in enumerate(clip_list):
        for mode in modes:
            for schedule in (["-"] if mode == "server_vad" else ["serial"] if mode == "legacy" else schedules):
                rows.append(await replay(clip, models, mode, schedule))
        if progress:
            sys.stderr.write(f"\r{i + 1}/{len(clip_list)} clips")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    models.save()
    return rows


def write_json(path: str, head: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The report; rows (one a line) of the server's policy and server_vad only, what each
    judgment saw only where the turn went wrong (the other policies are in the summary)."""
    kept = [{k: v for k, v in r.items() if k not in ("judgments", "text") or r["false_endpoint"] or r["late"]}
            for r in rows if r["mode"] == "server_vad" or (r["mode"] == "semantic_vad" and r["schedule"] == "parallel")]
    with open(path, "w") as f:
        f.write(json.dumps(head, default=str)[:-1] + ', "rows": [\n')
        f.write(",\n".join(json.dumps(r, default=str) for r in kept))
        f.write("\n]}\n")


def _override(item: str) -> None:
    """``NAME=VALUE`` or ``NAME.KEY=VALUE``: a constant of the turn decision or its text rule."""
    name, _, value = item.partition("=")
    name, _, key = name.partition(".")
    module = next((m for m in (semantic, turn_text) if hasattr(m, name)), None)
    if module is None:
        raise SystemExit(f"--set: neither quillman.pipeline.semantic nor turn_text has {name}")
    if key:
        getattr(module, name)[key] = type(getattr(module, name)[key])(value)
    else:
        setattr(module, name, type(getattr(module, name))(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quillman bench turns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_config.yaml", help="the server's ASR settings")
    parser.add_argument("--split", choices=("tune", "test", "both"), default="both")
    parser.add_argument("--voices", default=None, help="comma-separated indexes into the data file's voices")
    parser.add_argument("--policies", default="semantic_vad,legacy",
                        help=f"semantic_vad policies to replay beside server_vad: {', '.join(POLICIES)}")
    parser.add_argument("--schedules", default="parallel,serial",
                        help="parallel (Smart Turn beside the ASR: the server) and/or serial (after it)")
    parser.add_argument("--fresh", action="store_true", help="measure the models again (ignore the cache)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a number of quillman.pipeline.semantic for the run (tuning), "
                             "e.g. AUDIO_VETO=0.1 or SHORT_WAIT_MS.auto=900")
    parser.add_argument("--explain", action="store_true", help="list every false / late endpoint")
    parser.add_argument("--json", help="write every row, the summary and the costs here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    for item in args.set:
        _override(item)
    splits = {"tune", "test"} if args.split == "both" else {args.split}
    data = load_set()
    voices = [int(v) for v in args.voices.split(",")] if args.voices else None
    clip_list = clips(data, splits, voices)
    models = Models(args.config, fresh=args.fresh)
    modes = [*args.policies.split(","), "server_vad"]
    rows = asyncio.run(run(clip_list, models, modes, args.schedules.split(",")))
    rows.sort(key=lambda r: (r["split"] != "test",))
    table, cost = summary(rows), costs(rows)
    if args.json:
        write_json(args.json, {"voices": [v["name"] for v in data["voices"]], "pause_ms": data["pause_ms"],
                               "asr": models.asr_name, "costs": cost, "summary": table}, rows)
    if args.explain:
        print(explain(rows))
    print(markdown_report(table, cost) if args.markdown else json.dumps({"summary": table, "costs": cost}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
