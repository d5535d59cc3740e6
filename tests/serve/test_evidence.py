"""Evidence files on SQLite and PostgreSQL: a refused ingestion leaves none behind, and never removes one
that a case references or that a concurrent ingestion is filing."""

from __future__ import annotations

import threading

import pytest
from servetest import jpeg

from pipeline.cases import EvidenceImage
from serve.store import InvalidRequest


def on_disk(store) -> set[str]:
    """Evidence ids of the files in the store's folder."""
    return {p.stem for p in store.evidence.root.rglob("*.jpg")}


def test_a_refused_ingest_leaves_no_new_evidence_files(store, violation):
    """A key reused for another violation is refused (422) after its pictures were written: they stayed on
    disk with no case referencing them. A picture the refused violation shares with a case stays."""
    first = violation(key="reused", source_id="cam-a")
    store.ingest(first)
    kept = first.evidence[0]
    fresh = EvidenceImage(kind="crop", jpeg=jpeg(4242))
    other = first.model_copy(update={"source_id": "cam-b", "evidence": [kept, fresh]})
    with pytest.raises(InvalidRequest, match="already filed"):
        store.ingest(other)
    assert on_disk(store) == {kept.sha256}
    assert store.evidence.read(kept.sha256) == kept.jpeg


def test_a_refused_ingest_keeps_a_file_a_concurrent_ingest_is_filing(store, violation, monkeypatch):
    """The refused ingestion wrote a picture; another one, with the same bytes (a photo's clean frame is in
    every case found on it), found it there and has not committed yet when the first removes it: the
    second case must still have its picture."""
    store.ingest(violation(key="reused", source_id="cam-a"))
    shared = EvidenceImage(kind="clean", jpeg=jpeg(777))
    refused = violation(key="reused", source_id="cam-b", evidence=[shared])
    accepted = violation(key="fine", source_id="cam-c", evidence=[shared])
    put = store.evidence.put
    second_put, refused_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            store.ingest(accepted)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def paused_put(data: bytes) -> tuple[str, bool]:
        result = put(data)
        if threading.current_thread() is threading.main_thread():  # the refused one wrote it: the other comes
            worker.start()
            assert second_put.wait(30)
        else:  # the second found it there: it waits before its transaction until the first is refused
            second_put.set()
            assert refused_done.wait(30)
        return result

    worker = threading.Thread(target=second)
    monkeypatch.setattr(store.evidence, "put", paused_put)
    with pytest.raises(InvalidRequest):
        store.ingest(refused)
    refused_done.set()
    worker.join(60)
    assert not errors and not worker.is_alive()
    cases = store.evidence_cases([shared.sha256])[shared.sha256]
    assert len(cases) == 1
    assert store.evidence.read(shared.sha256) == shared.jpeg
