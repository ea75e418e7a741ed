"""The vLLM server (or any OpenAI-compatible server): chat, vision, embeddings. Unset URL = no LLM."""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

from dagster import ConfigurableResource

from mmrag.llm import LLMClient
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
        s = self.settings()
        if not s.llm_url:
            return None
        return _client(s.llm_url, s.llm_model, s.vlm_model, s.llm_api_key, s.llm_concurrency, s.llm_timeout_s,
                       s.llm_retries)


@lru_cache(maxsize=4)
def _client(url, model, vlm_model, api_key, concurrency, timeout_s, retries) -> LLMClient:
    if not model:
        # vLLM serves one model per server: use the one it lists rather than demanding the name.
        probe = LLMClient(url, "probe", api_key=api_key, timeout_s=timeout_s, retries=retries)
        model = probe._client.models.list().data[0].id
    return LLMClient(url, model, vlm_model, api_key, concurrency, timeout_s, retries)
