"""Evaluation on a two-document slice built to give known recall: `mmrag eval` and the asset."""

from __future__ import annotations

import json

import pytest
from helpers import cli_json
from openai_server import lightrag_aware, prompt_text

BIRDS = ["Mallards dabble at the surface of shallow ponds and eat seeds and water plants.",
         "The peregrine falcon dives at more than three hundred kilometres per hour to strike its prey.",
         "Emperor penguins huddle together through the Antarctic winter to keep warm."]
MACHINES = ["The steam locomotive Flying Scotsman hauled express trains from London to Edinburgh.",
            "Container ships carry twenty thousand steel boxes across the Pacific Ocean."]
SAMPLES = [
    ("birds.pdf", "How fast does the peregrine falcon dive?", [2], ["Pure-text (Plain-text)"]),
    ("birds.pdf", "How do emperor penguins survive the Antarctic winter?", [3], ["Pure-text (Plain-text)"]),
    ("machines.pdf", "Between which cities did the Flying Scotsman run?", [1], ["Table"]),
    # Labelled with the wrong page on purpose: the right page ranks first, the labelled one second.
    ("machines.pdf", "How many boxes do container ships carry across the Pacific?", [1], ["Pure-text (Plain-text)"]),
    ("birds.pdf", "What is the boiling point of mercury?", [], []),  # not answerable
]


def _pdf(path, pages):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with plt.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:  # TrueType: extractable text
        for text in pages:
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.1, 0.9, text, fontsize=11)
            pdf.savefig(fig)
            plt.close(fig)


def _slice(tmp_path):
    folder = tmp_path / "slice"
    (folder / "documents").mkdir(parents=True)
    _pdf(folder / "documents" / "birds.pdf", BIRDS)
    _pdf(folder / "documents" / "machines.pdf", MACHINES)
    with open(folder / "samples.jsonl", "w") as f:
        for doc, q, pages, sources in SAMPLES:
            f.write(json.dumps({"doc_id": doc, "doc_type": "test", "question": q, "answer": "",
                                "evidence_pages": str(pages), "evidence_sources": str(sources),
                                "answer_format": "Str" if pages else "None"}) + "\n")
    return folder


@pytest.mark.slow
def test_eval_cli_gives_the_recall_the_slice_was_built_to_give(mmrag_env, tmp_path, capsys, openai_server, monkeypatch):
    monkeypatch.setenv("MMRAG_LLM_URL", openai_server.base_url)
    monkeypatch.setenv("MMRAG_LLM_MODEL", "fake-llm")
    # The model declines the question whose sources say nothing about it, and answers the rest.
    # (Graph extraction prompts get LightRAG-format replies: a reply in no format fails the file.)
    openai_server.responder = lambda req: (
        lightrag_aware(req) if "<|COMPLETE|>" in prompt_text(req)
        else "CANNOT_ANSWER" if "mercury" in prompt_text(req).lower() else "Seeds [1].")
    folder = _slice(tmp_path)
    code, res = cli_json(capsys, "eval", str(folder))
    assert code == 0
    assert res["questions"] == 4 and res["documents"] == 2
    assert (res["recall@1"], res["recall@5"], res["recall@10"]) == (0.75, 1.0, 1.0)
    assert res["by_source"]["Table"] == {"n": 1, "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    assert res["by_source"]["Pure-text"]["n"] == 3 and res["by_source"]["Pure-text"]["recall@1"] == round(2 / 3, 4)
    wrong = next(q for q in res["per_question"] if "container" in q["question"])
    assert wrong["first_hit_rank"] == 2 and wrong["retrieved_pages"][0] == 2
    assert res["not_answerable"] == {"n": 1, "recognised": 1, "share": 1.0, "errors": 0}
    assert open(res["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # The asset reads the same index and records the figures, the table and the plot.
    from dagster import DagsterInstance, materialize

    from mmrag.definitions import default_resources
    from mmrag_assets.retrieval_eval import retrieval_eval

    monkeypatch.delenv("MMRAG_LLM_URL")
    instance = DagsterInstance.ephemeral()

    def run_eval(**config):
        result = materialize([retrieval_eval], resources=default_resources(), instance=instance,
                             run_config={"ops": {"retrieval_eval": {"config": {"eval_dir": str(folder), **config}}}})
        assert result.success  # a failed ERROR check is recorded, it does not fail the step
        [check] = result.get_asset_check_evaluations()
        return result.asset_materializations_for_node("retrieval_eval")[0].metadata, check

    meta, check = run_eval(recall_at_5_floor=0.9)
    assert meta["recall@1"].value == 0.75 and meta["recall@5"].value == 1.0
    assert "| all | 4 | 0.750 | 1.000 | 1.000 |" in meta["table"].value
    assert meta["plot"].value.endswith(".png") and meta["not_answerable_recognised"].value.startswith("n/a")
    assert check.check_name == "recall_at_5" and check.passed, check.description
    assert "no previous evaluation" in check.description

    # The gate: a question whose evidence page no document has brings recall@5 to 0.8 —
    # under the floor, and a drop from the last evaluation (1.0), each named.
    with open(folder / "samples.jsonl", "a") as f:
        f.write(json.dumps({"doc_id": "birds.pdf", "doc_type": "test", "question": "Where do puffins nest?",
                            "answer": "", "evidence_pages": "[9]", "evidence_sources": "['Pure-text (Plain-text)']",
                            "answer_format": "Str"}) + "\n")
    meta, check = run_eval(recall_at_5_floor=0.9)
    assert meta["recall@5"].value == 0.8 and not check.passed
    assert check.severity.value == "ERROR"
    assert "under the floor 0.900" in check.description and "dropped from 1.000 to 0.800" in check.description
    stored = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [check.asset_check_key])[check.asset_check_key]
    assert stored.status.value == "FAILED"
    # A lower floor and a drop compared with the last evaluation (0.8 now): it passes again.
    meta, check = run_eval(recall_at_5_floor=0.5)
    assert check.passed and "previous 0.800" in check.description


def test_eval_asset_says_what_to_run_when_the_documents_are_not_indexed(mmrag_env, tmp_path):
    from dagster import DagsterInstance, materialize

    from mmrag.definitions import default_resources
    from mmrag_assets.retrieval_eval import retrieval_eval

    folder = _slice(tmp_path)
    result = materialize([retrieval_eval], resources=default_resources(), instance=DagsterInstance.ephemeral(),
                         run_config={"ops": {"retrieval_eval": {"config": {"eval_dir": str(folder)}}}},
                         raise_on_error=False)
    assert not result.success
    err = result.failure_data_for_node("retrieval_eval").error
    assert "not indexed under source 'eval-slice'" in str(err) and "mmrag eval" in str(err)
