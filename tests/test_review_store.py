"""The decisions file of `velora review`: append-only, synced, last writer wins per example, undo as its own event,
ids that make a retried request harmless, a torn last line that costs nothing, and two processes appending at
once without losing an event."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from velora.errors import VeloraError
from velora.review.store import DecisionStore, check_decision, decisions_path


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_last_writer_wins_and_undo_falls_back_to_the_previous_decision(tmp_path):
    store = DecisionStore(tmp_path / "d.jsonl")
    store.append({"id": "first-decision", "example": "7", "action": "relabel", "label": "no"})
    store.append({"id": "second-decision", "example": "7", "action": "drop"})
    store.append({"id": "other-example", "example": "8", "action": "keep"})
    assert {k: d.action for k, d in store.current().items()} == {"7": "drop", "8": "keep"}
    undo, _ = store.append({"id": "undo-the-drop", "action": "undo", "undoes": "second-decision"})
    assert undo.example == "7"
    assert store.current()["7"].label == "contradiction"  # 'no' normalised; the relabel is in force again
    store.append({"id": "undo-relabel", "action": "undo", "undoes": "first-decision"})
    assert "7" not in store.current()
    assert [e["action"] for e in lines(store.path)] == ["relabel", "drop", "keep", "undo", "undo"]  # nothing rewritten


def test_a_new_store_on_the_same_file_resumes_and_a_repeated_id_is_stored_once(tmp_path):
    path = tmp_path / "d.jsonl"
    DecisionStore(path).append({"id": "abcdefgh01", "example": "1", "action": "edit", "hypothesis": "  two\n dogs "})
    again = DecisionStore(path)
    assert again.current()["1"].hypothesis == "two dogs"  # whitespace as `velora convert` stores sentences
    again.append({"id": "abcdefgh01", "example": "1", "action": "drop"})  # a retried request: same id
    assert len(lines(path)) == 1 and again.current()["1"].action == "edit"


def test_another_writer_is_seen_and_a_decision_on_a_stale_view_says_what_it_replaced(tmp_path):
    path = tmp_path / "d.jsonl"
    tab_a, tab_b = DecisionStore(path), DecisionStore(path)
    first, overtaken = tab_a.append({"id": "from-tab-a", "example": "3", "action": "keep"})
    assert overtaken is None
    assert tab_b.current()["3"].id == "from-tab-a"  # read from the file, not from tab_a's memory
    _, overtaken = tab_b.append({"id": "from-tab-b", "example": "3", "action": "drop", "seen": None})
    assert overtaken.id == "from-tab-a"  # tab b had not seen it: both kept, the later one counts
    _, overtaken = tab_a.append({"id": "from-tab-a-2", "example": "3", "action": "keep", "seen": "from-tab-b"})
    assert overtaken is None
    assert len(lines(path)) == 3


def test_a_torn_last_line_is_skipped_and_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "d.jsonl"
    DecisionStore(path).append({"id": "before-crash", "example": "1", "action": "keep"})
    with path.open("ab") as f:
        f.write(b'{"v": 1, "id": "torn-by-crash", "example": "2", "act')  # the process died mid-write
    store = DecisionStore(path)
    assert list(store.current()) == ["1"]
    store.append({"id": "after-restart", "example": "2", "action": "drop"})
    assert DecisionStore(path).current()["2"].id == "after-restart"
    assert DecisionStore(path).state.damaged_lines == 1


@pytest.mark.parametrize("values, field", [
    ({"example": "1", "action": "destroy"}, "action"),
    ({"example": "1", "action": "relabel"}, "label"),
    ({"example": "1", "action": "relabel", "label": "maybe-not"}, "label"),
    ({"example": "1", "action": "edit", "hypothesis": "x" * 2001}, "hypothesis"),
    ({"example": "1", "action": "edit", "hypothesis": "   "}, "hypothesis"),
    ({"example": "1", "action": "edit"}, "edit"),
    ({"example": "1", "action": "keep", "id": "../../etc"}, "id"),
    ({"action": "undo", "undoes": "x"}, "undoes"),
    ({"action": "keep"}, "example"),
])
def test_bad_decisions_are_refused_naming_the_field(values, field):
    with pytest.raises(VeloraError, match=f"^{field}"):
        check_decision(values)


def test_undo_of_an_unknown_decision_is_refused(tmp_path):
    with pytest.raises(VeloraError, match="no decision"):
        DecisionStore(tmp_path / "d.jsonl").append({"action": "undo", "undoes": "never-made-1"})


def test_decisions_file_sits_beside_the_data(tmp_path):
    (tmp_path / "hard.csv").write_text("x")
    (tmp_path / "hf_dataset").mkdir()
    assert decisions_path(tmp_path / "hard.csv") == tmp_path / "hard.decisions.jsonl"
    assert decisions_path(tmp_path / "hf_dataset") == tmp_path / "hf_dataset.decisions.jsonl"


def _append_many(path: str, writer: int, count: int) -> None:
    store = DecisionStore(path)
    for i in range(count):
        store.append({"id": f"writer{writer}-{i:04d}", "example": str(i % 7), "action": "keep"})


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    path = tmp_path / "d.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 150)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    events = lines(path)  # every line is whole JSON
    assert len(events) == 300 and len({e["id"] for e in events}) == 300
