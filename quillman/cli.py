"""``quillman``: talk to a running server from the command line.

  quillman talk question.wav -o reply.wav [--url ws://127.0.0.1:8000/v1/realtime] [--format pcmu]
  quillman transcribe speech.wav   stream a file through a transcription session
  quillman say "What is the capital of France?" -o reply.wav
  quillman doctor [--config serve_config.yaml]   load and probe every engine, one process each
  quillman check-config serve_config.yaml
  quillman bench ...            (needs the bench extra; see quillman_bench.bench)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import numpy as np
import soundfile as sf

from quillman.client import (DEFAULT_URL, RealtimeClient, TranscribedTurn, TurnResult, transcribe_stream,
                             transcription_session)

FORMATS = {"pcm16": "audio/pcm", "pcmu": "audio/pcmu", "pcma": "audio/pcma"}


def _print_result(result: TurnResult, out_path: str | None) -> None:
    print(f"you:       {result.user_transcript}")
    print(f"assistant: {result.reply_text.strip()}")
    print(f"status:    {result.status}; reply audio {result.reply_audio_s:.2f} s")
    if result.latency_ms is not None:
        print(f"voice-to-voice (client): {result.latency_ms:.0f} ms")
    if result.timings:
        print("server timings (ms from end of speech): " + json.dumps(result.timings))
    for error in result.errors:
        print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    if out_path:
        sf.write(out_path, result.reply_audio, result.sample_rate_hz, subtype="PCM_16")
        print(f"saved {out_path}")


async def _demo_tools(client: RealtimeClient, args: argparse.Namespace) -> None:
    if args.demo_tools:
        from quillman.demo_tools import TOOLS

        await client.send({"type": "session.update", "session": {"tools": TOOLS, "tool_choice": "auto"}})
        await client.wait_for("session.updated")


async def _answer_calls(client: RealtimeClient, args: argparse.Namespace, result: TurnResult) -> TurnResult:
    if not args.demo_tools:
        return result
    from quillman.demo_tools import run_tool

    for item in result.response.get("output", []):
        if item.get("type") == "function_call":
            print(f"tool call: {item['name']}({item['arguments']})")
    return await client.answer_calls(result, run_tool, timeout=args.timeout)


async def _talk(args: argparse.Namespace) -> TurnResult:
    pcm, rate = sf.read(args.input, dtype="int16", always_2d=True)
    async with RealtimeClient(args.url, chunk_ms=args.chunk_ms, api_key=args.api_key,
                              audio_format=FORMATS[args.format]) as client:
        await _demo_tools(client, args)
        result = await client.talk(pcm.mean(axis=1).astype(np.int16), rate, timeout=args.timeout)
        return await _answer_calls(client, args, result)


def _print_transcript_line(kind: str, turn: TranscribedTurn) -> None:
    if kind == "delta":
        print(f"partial:  {''.join(turn.deltas)}", flush=True)
    else:
        print(f"final:    {turn.transcript}  ({turn.usage_s or 0:.1f} s of audio)", flush=True)


async def _transcribe(args: argparse.Namespace) -> int:
    pcm, rate = sf.read(args.input, dtype="int16", always_2d=True)
    fmt = FORMATS[args.format]
    client = RealtimeClient(args.url, chunk_ms=args.chunk_ms, api_key=args.api_key, audio_format=fmt)
    await client.connect(transcription_session(fmt, client.rate, args.language, args.noise_reduction))
    try:
        turns = await transcribe_stream(client, pcm.mean(axis=1).astype(np.int16), rate,
                                        on_event=_print_transcript_line, realtime=not args.fast,
                                        timeout=args.timeout)
    finally:
        await client.close()
    return 0 if turns and all(t.transcript is not None for t in turns) else 1


async def _say(args: argparse.Namespace) -> TurnResult:
    async with RealtimeClient(args.url, api_key=args.api_key) as client:
        await _demo_tools(client, args)
        return await _answer_calls(client, args, await client.say(args.text, timeout=args.timeout))


def _check_config(args: argparse.Namespace) -> int:
    """Ray Serve's own schema, our AppConfig for each app's args, and the GPU split."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from quillman.config import AppConfig, gpu_layout_problems

    failed = 0
    for path in args.path:
        try:
            with open(path) as f:
                schema = ServeDeploySchema.model_validate(yaml.safe_load(f))
            problems = []
            for app in schema.applications:
                config = AppConfig.model_validate(app.args or {})
                deployments = [d.model_dump(exclude_unset=True) for d in app.deployments]
                problems += gpu_layout_problems(config, deployments, args.gpus_per_node)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            problems = [str(exc)]
        status = "ok" if not problems else "INVALID"
        print(f"{path}: {status}")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    return 1 if failed else 0


BENCH_HELP = "measure voice-to-voice latency with simulated callers (needs the bench extra)"


def _bench(argv: list[str]) -> int:
    """``quillman bench``: the load-test tooling is imported only here, and only if its extra
    is installed."""
    from quillman_bench import INSTALL_HINT, REQUIRED_MODULES, missing_modules

    missing = missing_modules()
    if not missing:
        try:
            from quillman_bench.bench import main as bench_main
        except ImportError as exc:  # a broken install of the extra; other import errors propagate
            if (exc.name or "").split(".")[0] not in REQUIRED_MODULES:
                raise
            missing = [exc.name]
    if missing:
        print(f"quillman bench: {', '.join(missing)} not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(prog="quillman", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    talk = sub.add_parser("talk", help="send a recorded question at live pace, save the spoken reply")
    talk.add_argument("input", help="wav/flac file with the question")
    transcribe = sub.add_parser("transcribe", help="stream a recording through a transcription session; "
                                "print partial and final transcripts")
    transcribe.add_argument("input", help="wav/flac file")
    transcribe.add_argument("--language", default="en")
    transcribe.add_argument("--noise-reduction", choices=["near_field", "far_field"], default=None)
    transcribe.add_argument("--fast", action="store_true", help="send faster than real time")
    for p in (talk, transcribe):
        p.add_argument("--chunk-ms", type=int, default=20, help="audio frame size (20-100 ms)")
        p.add_argument("--format", choices=sorted(FORMATS), default="pcm16",
                       help="wire audio format: pcm16 at 24 kHz, or G.711 pcmu / pcma at 8 kHz")
    say = sub.add_parser("say", help="send a text question, save the spoken reply")
    say.add_argument("text")
    for p in (talk, say, transcribe):
        if p is not transcribe:
            p.add_argument("-o", "--output", help="where to save the reply (wav)")
        p.add_argument("--url", default=DEFAULT_URL)
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--api-key", default=None, help="defaults to $QUILLMAN_API_KEY")
        p.add_argument("--demo-tools", action="store_true",
                       help="declare the example tools (clock, calculator) and run the calls here")

    check = sub.add_parser("check-config", help="validate a Serve config file before deploying it")
    check.add_argument("path", nargs="+")
    check.add_argument("--gpus-per-node", type=int, default=None,
                       help="check that all GPU fractions fit on one node with this many GPUs")
    check.set_defaults(run=_check_config)

    from quillman import doctor

    doctor_parser = sub.add_parser("doctor", help="load every engine of a serve config and run one tiny inference each")
    doctor.add_arguments(doctor_parser)
    doctor_parser.set_defaults(run=doctor.run)

    # Listed here; `quillman bench ...` never reaches this parser (see _bench).
    sub.add_parser("bench", help=BENCH_HELP, add_help=False)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench([])
    if args.command in ("check-config", "doctor"):
        return args.run(args)
    if args.command == "transcribe":
        return asyncio.run(_transcribe(args))
    result = asyncio.run(_talk(args) if args.command == "talk" else _say(args))
    _print_result(result, args.output)
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
