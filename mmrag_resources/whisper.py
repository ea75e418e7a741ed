"""Whisper speech recognition: faster-whisper (default, offline tiny.en) or openai-whisper."""

from __future__ import annotations

from typing import Optional

from dagster import ConfigurableResource

from mmrag.parsing.media import Transcriber
from mmrag_resources._settings import resolved


class WhisperResource(ConfigurableResource):
    """Unset fields come from MMRAG_WHISPER_BACKEND / MMRAG_WHISPER_MODEL / MMRAG_WHISPER_LANGUAGE
    ("" = detect where the model is multilingual). The model loads once per process, on the first
    audio file of a run that has no subtitles."""

    backend: Optional[str] = None
    model: Optional[str] = None
    language: Optional[str] = None

    def settings(self):
        return resolved(whisper_backend=self.backend, whisper_model=self.model, whisper_language=self.language)

    def transcriber(self) -> Transcriber:
        s = self.settings()
        return Transcriber(s.whisper_backend, s.whisper_model, language=s.whisper_language)
