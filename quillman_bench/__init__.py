"""Load, latency and soak tooling for a running server; not part of what the server runs.

Needs the ``bench`` (or ``test``) extra: ``pip install -e '.[bench]'``. This module itself is
standard library only, so ``quillman`` can check for the extra before importing the rest.

  bench.py    ``quillman bench``: simulated callers, the concurrency sweep and its command line
  report.py   statistics (the one percentile definition) and the bench report: summaries,
              comparison, SLO, markdown
  plot.py     the bench report as a PNG (matplotlib, optional)
  machine.py  the machine: CPU model, cores, memory; CPU use sampled during a run (psutil)
  server.py   the server under test seen from this machine: its Ray replicas, their memory
              and CPU time (psutil), ``/healthz``
  soak.py     the soak: N sessions for M minutes with barge-ins and disconnects
              (``python -m quillman_bench.soak``)
  speech.py   espeak-ng and Piper test speech, the benchmark questions, word error rate
  asr_bench.py  ``quillman bench asr``: ASR word error rate per input format (pcm16, G.711),
              noise reduction, Whisper model and encoder window, through the session's decode path
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "install the bench extra: pip install -e '.[bench]'"
# What the tools import beyond the runtime's dependencies (matplotlib is optional: --plot).
REQUIRED_MODULES = ("psutil", "jiwer")


def missing_modules() -> list[str]:
    """The modules of the bench extra that are not installed."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
