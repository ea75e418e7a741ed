"""Pytest fixtures for code that talks to the model server.

Import into a conftest (or a test module) with `from fixtures_llm import openai_server`.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from openai_server import FakeOpenAIServer


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A fresh loopback OpenAI-compatible server (models fake-llm, fake-vlm, fake-embed)."""
    with FakeOpenAIServer() as server:
        yield server
