"""The application builder named in serve_config.yaml: ``import_path: quillman.app:build``."""

from __future__ import annotations

from ray.serve import Application

from quillman.config import AppConfig
from quillman.deployments.ingress import Ingress
from quillman.deployments.language_model import LanguageModel
from quillman.deployments.speaker import Speaker
from quillman.deployments.transcriber import Transcriber


def build(args: AppConfig) -> Application:
    """Serve validates ``args:`` into :class:`AppConfig` (typed builder) before calling this."""
    config = AppConfig.model_validate(args)
    return Ingress.bind(
        Transcriber.bind(config.asr),
        LanguageModel.bind(config.llm),
        Speaker.bind(config.tts),
        config,
    )
