"""``audio.input.noise_reduction``: RNNoise over the user's audio while it is set."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from quillman import errors

if TYPE_CHECKING:
    from quillman.engines.noise import NoiseSuppressor

logger = logging.getLogger(__name__)


class NoiseReduction:
    def __init__(self) -> None:
        self.suppressor: NoiseSuppressor | None = None  # while noise reduction is on

    def configure(self, kind: str | None, rate_hz: int) -> None:
        """On (``kind``) at this input rate, or off; refused where RNNoise cannot load."""
        if kind is None:
            self.suppressor = None
        elif self.suppressor is None or self.suppressor.rate_hz != rate_hz:
            try:
                from quillman.engines.noise import NoiseSuppressor  # loads RNNoise only when asked for

                self.suppressor = NoiseSuppressor(rate_hz)
            except (ImportError, OSError):
                logger.warning("noise reduction asked for but RNNoise (pyrnnoise) cannot load", exc_info=True)
                raise errors.UnsupportedFeature(
                    "audio.input.noise_reduction is not available on this server (RNNoise is not "
                    "installed); send null", param="session.audio.input.noise_reduction") from None

    def process(self, pcm16: np.ndarray) -> np.ndarray:
        return pcm16 if self.suppressor is None else self.suppressor.process(pcm16)
