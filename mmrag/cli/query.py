"""`mmrag query`: through the running query API when there is one, else in this process."""

from __future__ import annotations

import json
import os
import sys

from mmrag.cli.common import EXIT_ANSWER_FAILED, EXIT_BAD_ROOT, EXIT_BUSY
from mmrag.config import Settings


def cmd_query(args) -> int:
    """Through the running query server when there is one (no model load; the same JSON), else in
    this process."""
    from mmrag.retrieval.answer import where
    from mmrag.serve.discovery import running_api
    from mmrag.serve.service import QueryError, QueryService

    settings = Settings.from_env()
    req = {"question": args.text, "top_k": args.top_k, "mode": args.mode, "sources": args.source,
           "files": args.file, "modalities": args.modality, "answer": args.answer, "images": not args.no_images}
    out = None
    if url := running_api(settings.home):
        out = _query_server(url, req)
        if isinstance(out, int):
            return out
    if out is None:
        try:
            out = QueryService(settings).query(req.pop("question"), **req)
        except QueryError as e:
            print(f"mmrag: {e}", file=sys.stderr)
            return EXIT_BAD_ROOT
    hits = out["hits"]
    code = EXIT_ANSWER_FAILED if out["answer_status"] == "error" else 0
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return code
    if out["answer_status"] is not None:
        print(out["answer"] if out["answer_status"] != "no_llm" else "No LLM is configured (MMRAG_LLM_URL): showing what was retrieved.")
        if out["citations"]:
            print("\nSources:")
            for c in out["citations"]:
                h = hits[c["hit"]]
                print(f"  [{c['n']}] {h['source']}:{h['file']} {where(h)}" + (f"  {h['image_path']}" if h.get("image_path") else ""))
        print()
    if not hits:
        print("no hits")
    for i, h in enumerate(hits, 1):
        text = " ".join(h["text"].split())[:160]
        frame = f"\n    image: {h['image_path']}" if h.get("image_path") else ""
        print(f"{i:2d}. [{h['score']:.3f}] {h['source']}:{h['file']} {where(h)} ({h['modality']})\n    {text}{frame}")
    if out.get("pages"):
        print("\nbest pages: " + ", ".join(f"{p['source']}:{p['file']} p.{p['page'] + 1}" for p in out["pages"][:5]))
    if rr := out.get("rerank"):
        print(f"\nreranked by {rr['model']}: {rr['candidates']} candidates, {rr['ms']:.0f} ms"
              if not rr.get("error") else f"\nrerank by {rr['model']} failed, fused order kept: {rr['error']}")
    if out["graph_context"] and not args.answer:
        print(f"\ngraph context ({args.mode}): {len(out['graph_context'])} characters (--json shows it)")
    if out["answer_status"] == "error":
        print(f"mmrag: {out['answer']}", file=sys.stderr)
    return code


def _query_server(url: str, req: dict) -> dict | int | None:
    """POST the query to the server: its JSON, an exit code for a refusal, or None when it cannot be
    reached (the caller then answers in-process)."""
    import httpx

    key = os.environ.get("MMRAG_API_KEY", "")
    try:
        r = httpx.post(f"{url}/v1/query", json={k: v for k, v in req.items() if v is not None},
                       headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=600)
    except httpx.TransportError:
        return None
    if r.status_code == 200:
        return r.json()
    try:
        msg = r.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - not our server's error shape
        msg = r.text[:300]
    print(f"mmrag: the query server at {url} answered {r.status_code}: {msg}", file=sys.stderr)
    return EXIT_BUSY if r.status_code == 503 else EXIT_BAD_ROOT

