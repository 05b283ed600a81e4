"""Engine tests, one folder per stage (asr/, llm/, tts/) as in the package; the fakes of the GPU
libraries they share (engine_fakes.py) live here and are importable from every folder below."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
