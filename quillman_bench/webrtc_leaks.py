"""``quillman bench webrtc-leaks``: open and close WebRTC calls in a loop; count what is left.

Each call negotiates, waits for ``session.created`` on ``oai-events`` (ICE, DTLS and SCTP all
up), and hangs up. The ingress reports its live WebRTC objects on ``/healthz`` (calls, peer
connections, UDP sockets of the replica process, asyncio tasks of its loop); after the loop and a
settling wait they must be back where they started.

  quillman bench webrtc-leaks --url http://127.0.0.1:8000 --calls 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import httpx

from quillman.webrtc.caller import WebRtcCaller

COUNTED = ("calls", "peer_connections", "running_calls", "udp_sockets", "tasks")


async def counts(base: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=30) as http:
        body = (await http.get(f"{base}/healthz")).json()
    webrtc = body["deployments"]["Ingress"]["webrtc"]
    return {k: webrtc[k] for k in COUNTED}


async def settled(base: str, before: dict[str, int], wait_s: float) -> dict[str, int]:
    deadline = time.monotonic() + wait_s
    while True:
        now = await counts(base)
        if all(now[k] <= before[k] for k in COUNTED) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


async def loop(base: str, calls: int, settle_s: float = 30.0, key: str | None = None) -> dict[str, Any]:
    before = await counts(base)
    failed = 0
    start = time.monotonic()
    for _ in range(calls):
        caller = WebRtcCaller(base, key=key)
        try:
            await caller.connect()
        except Exception:  # noqa: BLE001 - counted; the loop goes on
            failed += 1
        finally:
            await caller.close()
    elapsed = time.monotonic() - start
    after = await settled(base, before, settle_s)
    return {"calls": calls, "failed": failed, "seconds": round(elapsed, 1), "before": before, "after": after,
            "leaked": {k: after[k] - before[k] for k in COUNTED}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quillman bench webrtc-leaks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's http base")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--api-key", default=os.environ.get("QUILLMAN_API_KEY"))
    args = parser.parse_args(argv)
    report = asyncio.run(loop(args.url.rstrip("/"), args.calls, key=args.api_key))
    print(json.dumps(report, indent=2))
    leaked = {k: v for k, v in report["leaked"].items() if v > 0}
    return 1 if leaked or report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
