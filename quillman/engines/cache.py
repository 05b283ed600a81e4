"""Where engines keep what they build from shipped weights (assembled or converted models).

``$QUILLMAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/quillman`` (``~/.cache/quillman``). Everything
in it can be deleted: it is rebuilt from the installed packages on the next start.
"""

from __future__ import annotations

import os
from pathlib import Path


def model_cache_dir() -> Path:
    root = os.environ.get("QUILLMAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "quillman"
    )
    return Path(root)
