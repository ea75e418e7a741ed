"""The vLLM server (or any OpenAI-compatible server): chat, vision, embeddings. Unset URL = no LLM."""

from __future__ import annotations

from typing import Optional

from dagster import ConfigurableResource

from mmrag.models import factory
from mmrag.models.llm import LLMClient
from mmrag_resources._settings import resolved


class LLMResource(ConfigurableResource):
    """Unset fields come from MMRAG_LLM_URL, _MODEL, MMRAG_VLM_MODEL, MMRAG_LLM_API_KEY, ... at run
    time. In a deployment, pass `api_key=EnvVar("MMRAG_LLM_API_KEY")` to keep the secret out of config."""

    base_url: Optional[str] = None
    model: Optional[str] = None
    vlm_model: Optional[str] = None
    api_key: Optional[str] = None
    concurrency: Optional[int] = None
    timeout_s: Optional[float] = None
    retries: Optional[int] = None

    def settings(self):
        return resolved(llm_url=self.base_url, llm_model=self.model, vlm_model=self.vlm_model,
                        llm_api_key=self.api_key, llm_concurrency=self.concurrency,
                        llm_timeout_s=self.timeout_s, llm_retries=self.retries)

    def client(self) -> LLMClient | None:
        """The process's client for this server (`mmrag.models.factory.llm_client`), None without a URL."""
        return factory.llm_client(self.settings())
