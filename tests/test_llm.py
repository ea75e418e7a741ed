"""LLMClient against the loopback OpenAI-compatible server: request shapes, retries, failures."""

from __future__ import annotations

import asyncio
import base64
import math
import threading
import time

import pytest
from openai_server import FakeOpenAIServer, image_parts
from PIL import Image

from mmrag.config import Settings
from mmrag.models.llm import LLMClient, LLMError, guess_image_mime, image_data_url


def client(server: FakeOpenAIServer, **kw) -> LLMClient:
    opts = dict(vlm_model="fake-vlm", concurrency=4, timeout_s=2.0, retries=2, backoff_s=0.01)
    opts.update(kw)
    return LLMClient(server.base_url, "fake-llm", **opts)


def png(path, color=(200, 30, 30), size=(8, 6), fmt=None):
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def test_complete_sends_openai_chat_request(openai_server):
    openai_server.responder = lambda req: "the answer"
    llm = client(openai_server)
    assert llm.complete("What is 2+2?", system="Be brief.", temperature=0.2, hashing_kv=object()) == "the answer"
    (rec,) = openai_server.requests
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["Authorization"] == "Bearer EMPTY"
    assert rec.json["model"] == "fake-llm"
    assert rec.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert rec.json["temperature"] == 0.2
    assert "hashing_kv" not in rec.json and not rec.json.get("stream")
    assert llm.calls == 1 and llm.attempts == 1


def test_api_key_is_sent_and_401_is_not_retried():
    with FakeOpenAIServer(api_key="sekret") as server:
        assert client(server, api_key="sekret").complete("hi")
        assert server.requests[-1].headers["Authorization"] == "Bearer sekret"
        with pytest.raises(LLMError) as ei:
            client(server, retries=3).complete("hi")
        assert ei.value.status == 401 and not ei.value.retryable
        assert server.count("/v1/chat/completions") == 2  # one ok, one 401, no retries


def test_describe_image_sends_data_url_to_vlm_model(openai_server, tmp_path):
    img = png(tmp_path / "fig.png")
    llm = client(openai_server)
    reply = llm.describe_image("Describe this figure.", img, system="You see images.")
    assert "attached image (image/png)" in reply
    req = openai_server.chat_requests()[0]
    assert req["model"] == "fake-vlm"
    assert req["messages"][0] == {"role": "system", "content": "You see images."}
    content = req["messages"][1]["content"]
    assert [p["type"] for p in content] == ["text", "image_url"]
    assert content[0]["text"] == "Describe this figure."
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == img.read_bytes()


def test_list_models(openai_server):
    openai_server.fail_next(1, status=502)
    assert client(openai_server).list_models() == ["fake-llm", "fake-vlm", "fake-embed"]
    assert [(r.method, r.path) for r in openai_server.requests] == [("GET", "/v1/models")] * 2


def test_vlm_model_falls_back_to_model(openai_server, tmp_path):
    llm = LLMClient(openai_server.base_url, "fake-llm", retries=0)
    assert llm.vlm_model == "fake-llm"
    llm.describe_image("?", png(tmp_path / "a.png"))
    assert openai_server.chat_requests()[0]["model"] == "fake-llm"


def test_image_mime_from_bytes_and_conversion(tmp_path):
    jpeg_named_png = png(tmp_path / "photo.png", fmt="JPEG")
    assert guess_image_mime(jpeg_named_png.read_bytes(), "photo.png") == "image/jpeg"
    assert image_data_url(jpeg_named_png).startswith("data:image/jpeg;base64,")
    bmp = png(tmp_path / "scan.bmp", fmt="BMP")
    assert guess_image_mime(bmp.read_bytes()) == "image/bmp"
    url = image_data_url(bmp)  # a VLM may not read BMP: re-encoded as PNG
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
    svg = tmp_path / "logo.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>')
    with pytest.raises(LLMError, match="cannot encode image"):
        image_data_url(svg)
    with pytest.raises(LLMError, match="not found"):
        image_data_url(tmp_path / "missing.png")


def test_embeddings_shape_order_and_batching(openai_server):
    llm = client(openai_server)
    texts = ["alpha", "beta", "gamma", "alpha", "delta"]
    vecs = llm.embed(texts, "fake-embed", batch_size=2)
    assert len(vecs) == 5 and all(len(v) == openai_server.embedding_dim for v in vecs)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vecs)
    assert vecs[0] == vecs[3] and vecs[0] != vecs[1]
    reqs = [r.json for r in openai_server.requests]
    assert [r["input"] for r in reqs] == [["alpha", "beta"], ["gamma", "alpha"], ["delta"]]
    assert all(r["model"] == "fake-embed" and r["encoding_format"] == "float" for r in reqs)
    assert llm.calls == 3


def test_retries_500_then_succeeds(openai_server):
    openai_server.fail_next(2, status=500)
    llm = client(openai_server, retries=3)
    assert llm.complete("hello").startswith("A fake description")
    assert openai_server.count("/v1/chat/completions") == 3
    assert llm.calls == 1 and llm.attempts == 3


def test_429_and_dropped_connection_are_retried(openai_server):
    openai_server.fail_next(1, status=429, message="slow down")
    openai_server.drop_next(1)
    llm = client(openai_server, retries=2)
    assert llm.complete("hello")
    assert openai_server.count("/v1/chat/completions") == 3


def test_retries_exhausted_raise_llmerror_with_server_message(openai_server):
    openai_server.fail_next(10, status=503, message="engine overloaded")
    llm = client(openai_server, retries=2)
    with pytest.raises(LLMError) as ei:
        llm.complete("hello")
    assert "engine overloaded" in str(ei.value) and "3 attempts" in str(ei.value)
    assert ei.value.status == 503 and ei.value.retryable
    assert openai_server.count("/v1/chat/completions") == 3


def test_4xx_is_not_retried(openai_server):
    openai_server.fail_next(5, status=400, message="prompt is too long")
    llm = client(openai_server, retries=3)
    with pytest.raises(LLMError, match="prompt is too long") as ei:
        llm.complete("hello")
    assert ei.value.status == 400 and not ei.value.retryable
    assert openai_server.count("/v1/chat/completions") == 1


def test_unknown_model_is_a_clear_error(openai_server):
    with pytest.raises(LLMError, match="does not exist"):
        client(openai_server).complete("hi", model="no-such-model")


def test_hang_past_timeout_raises(openai_server):
    openai_server.hang_next(5, seconds=10)
    llm = client(openai_server, timeout_s=0.5, retries=1)
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="timed out") as ei:
        llm.complete("hello")
    assert time.monotonic() - t0 < 3.0
    assert ei.value.retryable
    assert openai_server.count("/v1/chat/completions") == 2


def test_malformed_json_raises(openai_server):
    openai_server.malformed_next(5)
    llm = client(openai_server, retries=1)
    with pytest.raises(LLMError, match="malformed JSON"):
        llm.complete("hello")
    assert openai_server.count("/v1/chat/completions") == 2


def test_empty_reply_raises_without_retry(openai_server):
    openai_server.responder = lambda req: ""
    with pytest.raises(LLMError, match="no text"):
        client(openai_server).complete("hello")
    assert openai_server.count("/v1/chat/completions") == 1


def test_server_down_raises_connection_error():
    server = FakeOpenAIServer().start()
    url = server.base_url
    server.close()
    llm = LLMClient(url, "fake-llm", retries=1, timeout_s=1, backoff_s=0.01)
    with pytest.raises(LLMError, match="connection error"):
        llm.complete("hello")


def test_thread_concurrency_is_bounded(openai_server):
    openai_server.latency_s = 0.15
    llm = client(openai_server, concurrency=2)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(llm.complete(f"q{i}"))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert openai_server.max_in_flight == 2


def test_acomplete_works_as_lightrag_llm_model_func(openai_server):
    openai_server.latency_s = 0.1
    openai_server.responder = lambda req: f"echo:{req['messages'][-1]['content']}"
    llm = client(openai_server, concurrency=3)
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]

    async def main():
        return await asyncio.gather(
            *[
                llm.acomplete(
                    f"p{i}",
                    system_prompt="sys",
                    history_messages=history,
                    keyword_extraction=True,
                    hashing_kv=object(),
                    stream=False,
                    _priority=5,
                    max_tokens=64,
                )
                for i in range(7)
            ]
        )

    out = asyncio.run(main())
    assert out == [f"echo:p{i}" for i in range(7)]
    req = openai_server.chat_requests()[0]
    assert [m["role"] for m in req["messages"]] == ["system", "user", "assistant", "user"]
    assert req["max_tokens"] == 64
    assert not {"keyword_extraction", "hashing_kv", "_priority"} & set(req)
    assert openai_server.max_in_flight == 3
    assert not image_parts(req)


def test_the_factory_builds_the_client_from_settings(openai_server):
    from mmrag.models import factory

    assert factory.llm_client(Settings()) is None
    s = Settings(llm_url=openai_server.base_url, llm_model="fake-llm", llm_concurrency=5, llm_timeout_s=7, llm_retries=1)
    llm = factory.llm_client(s)
    assert factory.llm_client(s) is llm  # one client per configuration and process
    assert (llm.model, llm.vlm_model, llm.concurrency, llm.timeout_s, llm.retries) == ("fake-llm", "fake-llm", 5, 7.0, 1)
    assert llm.complete("hi")
    assert openai_server.requests[0].headers["Authorization"] == "Bearer EMPTY"
