"""The description stage against the loopback model server and a real manifest."""

from __future__ import annotations

import json

import pytest
from openai_server import FakeOpenAIServer, image_parts, prompt_text
from PIL import Image

from mmrag.blocks import Block, BlockKind, ParsedDocument
from mmrag.index.describe import (
    CACHE_NAMESPACE,
    cache_key,
    describe_document,
    describe_documents,
    parse_reply,
)
from mmrag.manifest import Manifest
from mmrag.models.llm import LLMClient

TABLE = "| City | Population |\n|---|---|\n| Oslo | 709000 |\n| Bergen | 289000 |"


def json_responder(req: dict) -> str:
    """Replies like a real model: reasoning, then a fenced JSON object."""
    kind = "image" if image_parts(req) else "text"
    body = {
        "detailed_description": f"Model description from {req['model']} ({kind}).",
        "entity_info": {"entity_name": f"Entity {kind}", "entity_type": kind, "summary": "short"},
    }
    return f"<think>let me look</think>\n```json\n{json.dumps(body)}\n```"


def make_doc(tmp_path, extra: list[Block] | None = None) -> ParsedDocument:
    img = tmp_path / "blobs" / "fig1.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (20, 120, 220)).save(img)
    blocks = [
        Block(id="b0", kind=BlockKind.TITLE, order=0, text="Nordic cities", page=0, level=1),
        Block(id="b1", kind=BlockKind.TEXT, order=1, text="Oslo is the capital of Norway.", page=0),
        Block(id="b2", kind=BlockKind.IMAGE, order=2, page=0, caption="Figure 1: Map of Oslo",
              image_path=str(img), meta={"ocr_text": "OSLO FJORD"}),
        Block(id="b3", kind=BlockKind.TEXT, order=3, text="Bergen is on the west coast.", page=0),
        Block(id="b4", kind=BlockKind.TABLE, order=4, text=TABLE, caption="Table 1: Populations", page=1),
        Block(id="b5", kind=BlockKind.EQUATION, order=5, text=r"\rho = \frac{N}{A}", page=1),
        Block(id="b6", kind=BlockKind.IMAGE, order=6, caption="Logo of the city council", page=1,
              image_missing="remote image not downloaded"),
        Block(id="b7", kind=BlockKind.TEXT, order=7, text="Density is people per area.", page=1),
    ]
    for i, b in enumerate(extra or [], start=len(blocks)):
        blocks.append(b.model_copy(update={"id": f"b{i}", "order": i}))
    return ParsedDocument(file_key="local:cities.pdf", source="local", rel_path="cities.pdf", content_hash="x",
                          mime="application/pdf", parser="test", parser_version="1", blocks=blocks)


def by_id(doc: ParsedDocument) -> dict[str, Block]:
    return {b.id: b for b in doc.blocks}


def llm_for(server: FakeOpenAIServer, **kw) -> LLMClient:
    opts = dict(vlm_model="fake-vlm", concurrency=4, timeout_s=2.0, retries=1, backoff_s=0.01)
    opts.update(kw)
    return LLMClient(server.base_url, "fake-llm", **opts)


@pytest.fixture
def manifest(tmp_path) -> Manifest:
    return Manifest(tmp_path / "state.sqlite")


def test_describe_with_llm_routes_images_to_vlm(openai_server, manifest, tmp_path):
    openai_server.responder = json_responder
    doc = make_doc(tmp_path)
    stats = describe_document(doc, llm_for(openai_server), manifest)
    b = by_id(doc)
    assert (stats.blocks, stats.llm_calls, stats.cache_hits, stats.extractive, stats.errors) == (4, 3, 0, 1, [])
    assert b["b2"].description == "Model description from fake-vlm (image)."
    assert b["b2"].description_source == "vlm"
    assert b["b2"].meta["entity"]["entity_name"] == "Entity image"
    for bid in ("b4", "b5"):  # table, equation: text model
        assert b[bid].description == "Model description from fake-llm (text)."
        assert b[bid].description_source == "llm"
        assert b[bid].meta["entity"]["entity_type"] == "text"
    # an image without bytes (never fetched) is not sent: a model that cannot see it would only
    # rephrase its caption and context, which the extractive description holds
    assert b["b6"].description_source == "extractive" and b["b6"].description.startswith("Logo of the city council")
    assert b["b1"].description == "" and b["b1"].description_source == ""  # text blocks untouched

    reqs = openai_server.chat_requests()
    vision = [r for r in reqs if image_parts(r)]
    assert len(vision) == 1 and vision[0]["model"] == "fake-vlm"
    assert image_parts(vision[0])[0]["image_url"]["url"].startswith("data:image/png;base64,")
    vtext = prompt_text(vision[0])
    assert "Figure 1: Map of Oslo" in vtext and "OSLO FJORD" in vtext and "Oslo is the capital" in vtext
    assert "detailed_description" in vtext  # RAG-Anything's vision prompt
    table_req = next(r for r in reqs if "| Oslo | 709000 |" in prompt_text(r))
    assert table_req["model"] == "fake-llm" and "Table 1: Populations" in prompt_text(table_req)
    assert any(r"\frac{N}{A}" in prompt_text(r) for r in reqs)
    assert manifest.cache_get(CACHE_NAMESPACE, cache_key(b["b2"], "fake-vlm"))["source"] == "vlm"


def test_second_pass_hits_cache_and_makes_no_calls(openai_server, manifest, tmp_path):
    openai_server.responder = json_responder
    llm = llm_for(openai_server)
    first = make_doc(tmp_path)
    describe_document(first, llm, manifest)
    sent = openai_server.count()
    assert sent == 3  # the picture without bytes is extractive

    second = make_doc(tmp_path)
    stats = describe_document(second, llm, manifest)
    assert openai_server.count() == sent  # zero server calls
    assert (stats.cache_hits, stats.llm_calls, stats.extractive) == (3, 0, 1)
    for a, b in zip(first.blocks, second.blocks):
        assert (a.description, a.description_source, a.meta.get("entity")) == (
            b.description, b.description_source, b.meta.get("entity"))


def test_changing_the_vision_model_redescribes_only_images(manifest, tmp_path):
    with FakeOpenAIServer(models=("fake-llm", "fake-vlm", "vlm-2")) as server:
        server.responder = json_responder
        describe_document(make_doc(tmp_path), llm_for(server), manifest)
        server.reset()
        doc = make_doc(tmp_path)
        stats = describe_document(doc, llm_for(server, vlm_model="vlm-2"), manifest)
        assert (stats.llm_calls, stats.cache_hits) == (1, 2)
        assert [r["model"] for r in server.chat_requests()] == ["vlm-2"]
        assert by_id(doc)["b2"].description == "Model description from vlm-2 (image)."


def test_no_llm_gives_extractive_descriptions(manifest, tmp_path):
    doc = make_doc(tmp_path)
    stats = describe_document(doc, None, manifest)
    b = by_id(doc)
    assert (stats.blocks, stats.llm_calls, stats.extractive, stats.cache_hits) == (4, 0, 4, 0)
    assert all(x.description_source == "extractive" for x in doc.modal_blocks())
    img = b["b2"].description
    assert "Figure 1: Map of Oslo" in img and "OSLO FJORD" in img and "Oslo is the capital" in img
    assert "Table 1: Populations" in b["b4"].description and "| Bergen | 289000 |" in b["b4"].description
    assert r"\rho = \frac{N}{A}" in b["b5"].description
    assert b["b6"].description.startswith("Logo of the city council")
    assert "entity" not in b["b2"].meta and "describe_error" not in b["b2"].meta
    for model in ("fake-llm", "fake-vlm", ""):
        assert manifest.cache_get(CACHE_NAMESPACE, cache_key(b["b4"], model)) is None


def test_llm_failure_falls_back_and_is_retried_next_run(openai_server, manifest, tmp_path):
    openai_server.fail_next(100, status=500, message="GPU fell over")
    doc = make_doc(tmp_path)
    stats = describe_document(doc, llm_for(openai_server), manifest, give_up_after=0)  # must not raise
    assert stats.extractive == 4 and len(stats.errors) == 3 and stats.llm_calls == 3
    for blk in doc.modal_blocks():
        assert blk.description_source == "extractive"
        assert blk.image_missing or "GPU fell over" in blk.meta["describe_error"]
    assert "Table 1: Populations" in by_id(doc)["b4"].description
    assert openai_server.count("/v1/chat/completions") == 6  # 3 blocks x (1 try + 1 retry)

    openai_server.clear_faults()
    openai_server.responder = json_responder
    again = make_doc(tmp_path)
    stats = describe_document(again, llm_for(openai_server), manifest)
    assert (stats.llm_calls, stats.cache_hits, stats.errors) == (3, 0, [])  # extractive was not cached
    assert {x.description_source for x in again.modal_blocks() if not x.image_missing} == {"vlm", "llm"}
    assert all("describe_error" not in x.meta for x in again.modal_blocks())


def test_server_that_keeps_failing_is_given_up_on(openai_server, manifest, tmp_path):
    openai_server.fail_next(100, status=503)
    doc = make_doc(tmp_path)
    stats = describe_document(doc, llm_for(openai_server, concurrency=1), manifest, give_up_after=2)
    assert stats.llm_calls == 2 and stats.extractive == 4
    assert openai_server.count("/v1/chat/completions") == 4  # 2 blocks x 2 attempts, then no more
    skipped = [x for x in doc.modal_blocks() if x.meta.get("describe_error", "").startswith("skipped")]
    assert len(skipped) == 1  # the third; the fourth, a picture without bytes, is never sent


def test_concurrency_limit_is_respected(openai_server, manifest, tmp_path):
    openai_server.latency_s = 0.15
    tables = [Block(id="t", kind=BlockKind.TABLE, order=0, text=f"| n |\n|---|\n| {i} |") for i in range(10)]
    doc = make_doc(tmp_path, extra=tables)
    stats = describe_document(doc, llm_for(openai_server, concurrency=3), manifest)
    assert stats.llm_calls == 13
    assert openai_server.max_in_flight == 3


def test_the_files_of_a_run_share_one_budget_and_ask_once_per_content(openai_server, manifest, tmp_path):
    """describe_documents: the requests of all files go to one pool (in flight: the client's
    concurrency, not each file's share of it), and the same picture or table in several files of the
    run is described once, every copy getting the description."""
    openai_server.latency_s = 0.3
    openai_server.responder = json_responder
    docs = []
    for i in range(3):
        own = Block(id="t", kind=BlockKind.TABLE, order=0, text=f"| file |\n|---|\n| {i} |")
        d = make_doc(tmp_path, extra=[own])  # the same picture, table and equation in every file, one own table
        docs.append(d.model_copy(update={"file_key": f"local:copy{i}.pdf", "rel_path": f"copy{i}.pdf"}))
    stats = describe_documents(docs, llm_for(openai_server, concurrency=8), manifest)
    # per file: 1 picture, 2 tables, 1 equation to describe (the picture without bytes is extractive);
    # shared by all files but one table
    assert openai_server.count("/v1/chat/completions") == 3 + 3
    assert openai_server.max_in_flight == 6  # every request of the run at once, across files
    assert sum(st.llm_calls for st in stats.values()) == 6 and sum(st.cache_hits for st in stats.values()) == 6
    for d in docs:
        assert {x.description_source for x in d.modal_blocks() if not x.image_missing} == {"vlm", "llm"}
    pics = {by_id(d)["b2"].description for d in docs}
    assert len(pics) == 1 and "image" in pics.pop()


def test_plain_text_reply_is_kept_as_description(openai_server, manifest, tmp_path):
    openai_server.responder = lambda req: "  A bar chart of populations.  "
    doc = make_doc(tmp_path)
    describe_document(doc, llm_for(openai_server), manifest)
    b2 = by_id(doc)["b2"]
    assert b2.description == "A bar chart of populations." and b2.description_source == "vlm"
    assert "entity" not in b2.meta


def test_remote_image_url_is_never_fetched(openai_server, manifest, tmp_path):
    openai_server.responder = json_responder
    remote = Block(id="r", kind=BlockKind.IMAGE, order=0, caption="Remote chart",
                   image_path=f"{openai_server.base_url}/models")
    doc = make_doc(tmp_path, extra=[remote])
    describe_document(doc, llm_for(openai_server), manifest)
    assert openai_server.count("/v1/models") == 0
    assert len([r for r in openai_server.chat_requests() if image_parts(r)]) == 1  # only the local PNG
    assert doc.blocks[-1].description_source == "extractive"  # no bytes: not sent at all


def test_relative_image_path_and_empty_blocks(openai_server, manifest, tmp_path):
    openai_server.responder = json_responder
    extra = [
        Block(id="x", kind=BlockKind.IMAGE, order=0, image_path="fig1.png"),  # relative to image_root
        Block(id="y", kind=BlockKind.EQUATION, order=0, text="  "),  # nothing to describe
    ]
    doc = make_doc(tmp_path, extra=extra)
    stats = describe_document(doc, llm_for(openai_server), manifest, image_root=tmp_path / "blobs")
    assert doc.blocks[-2].description_source == "vlm"
    assert doc.blocks[-1].description_source == "extractive" and doc.blocks[-1].description == ""
    assert (stats.blocks, stats.llm_calls, stats.extractive) == (6, 4, 2)


def test_big_table_extractive_is_truncated_by_rows(manifest, tmp_path):
    rows = "\n".join(f"| row {i} | {i * 7} |" for i in range(500))
    big = Block(id="t", kind=BlockKind.TABLE, order=0, caption="Big", text="| a | b |\n|---|---|\n" + rows)
    doc = make_doc(tmp_path, extra=[big])
    describe_document(doc, None, manifest)
    desc = doc.blocks[-1].description
    assert len(desc) < 2200 and desc.startswith("Big\n| a | b |") and "more rows)" in desc
    assert all(line.startswith(("|", "…", "Big")) for line in desc.splitlines())


@pytest.mark.parametrize(
    "reply, expected, entity",
    [
        ('<think>hmm {"x": 1}</think>{"detailed_description": "A map.", "entity_info": {"entity_name": "Map"}}',
         "A map.", {"entity_name": "Map"}),
        ('Sure!\n```json\n{"detailed_description": "Density \\frac{N}{A} and \\alpha"}\n```',
         r"Density \frac{N}{A} and \alpha", None),
        ('{"detailed_description": "Cut off mid-way', "Cut off mid-way", None),
        ("Just prose, no JSON.", "Just prose, no JSON.", None),
    ],
)
def test_parse_reply(reply, expected, entity):
    assert parse_reply(reply) == (expected, entity)
