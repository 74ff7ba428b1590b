"""A character's knowledge as ElizaOS reads it (strings, files, folders), chunked, bounded, and recalled for
each message by the recall index's ranker into the real prompt (the loopback OpenAI server records it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bot.agent import Incoming
from bot.agent.character import load_character, parse_character
from bot.facts.knowledge import MAX_FILES, KnowledgeIndex, chunk_text, load_knowledge
from bot.memory import Modality
from bot.services import build_services
from bot.settings import load_settings
from tests.fakes.openai_server import FakeOpenAI


def write_character(folder: Path, knowledge: list[object]) -> Path:
    path = folder / "wren.character.json"
    path.write_text(json.dumps({"name": "Wren", "knowledge": knowledge}), encoding="utf-8")
    return path


def test_strings_files_and_folders_are_read_as_elizaos_reads_them(tmp_path: Path) -> None:
    kb = tmp_path / "knowledge"
    (kb / "guides" / "deep").mkdir(parents=True)
    (kb / "lighthouse.md").write_text("# The lighthouse\n\nThe lamp turns every ten seconds.", encoding="utf-8")
    (kb / "notes.txt").write_text("Tea is served at four.", encoding="utf-8")
    (kb / "guides" / "boats.md").write_text("Boats leave the harbour at dawn.", encoding="utf-8")
    (kb / "guides" / "deep" / "tides.txt").write_text("Spring tides come with the full moon.", encoding="utf-8")
    (kb / "guides" / "ignored.json").write_text("{}", encoding="utf-8")
    (kb / "guides" / "manual.pdf").write_bytes(b"%PDF-1.4 binary")
    (tmp_path / "secret.md").write_text("outside the knowledge folder", encoding="utf-8")
    path = write_character(tmp_path, [
        "Wren grew up by the sea.", "notes.txt", {"path": "lighthouse.md", "shared": True},
        {"directory": "guides"}, {"path": "../secret.md"}, {"directory": "../"}, {"path": "missing.md"},
    ])
    character = load_character(path)
    assert [s.kind for s in character.knowledge_sources] == ["path", "directory", "path", "directory", "path"]
    texts = sorted(c.text for c in load_knowledge(character))
    assert texts == sorted(["Wren grew up by the sea.", "Tea is served at four.",
                            "# The lighthouse The lamp turns every ten seconds.", "Boats leave the harbour at dawn.",
                            "Spring tides come with the full moon."])
    # ".." is removed from a folder's name as ElizaOS does, so "../" is the knowledge folder itself.
    assert "outside the knowledge folder" not in texts


def test_bad_knowledge_is_bounded_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kb = tmp_path / "knowledge"
    (kb / "many").mkdir(parents=True)
    for i in range(10_000):
        (kb / "many" / f"f{i:05d}.txt").write_text(f"fact number {i}", encoding="utf-8")
    (kb / "blob.md").write_bytes(bytes(range(256)) * 64)
    (kb / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    path = write_character(tmp_path, [{"path": "blob.md"}, {"path": "latin1.txt"}, {"directory": "many"},
                                      "x" * 100_000])
    with caplog.at_level(logging.WARNING, logger="bot.facts.knowledge"):
        chunks = load_knowledge(load_character(path))
    files = {c.source for c in chunks if c.source != "character"}
    assert len(files) == MAX_FILES  # the first MAX_FILES of 10,000 files, in name order
    assert "many/f00000.txt" in files and "many/f09999.txt" not in files
    assert any("blob.md (a binary file, not text)" in r.message for r in caplog.records)
    assert any("latin1.txt (not UTF-8 text at byte 3)" in r.message for r in caplog.records)
    assert any("left the rest out" in r.message for r in caplog.records)
    long = [c for c in chunks if c.source == "character"]
    assert len(long) > 50 and all(len(c.text) <= 900 for c in long)  # a 100,000-character string, chunked


def test_chunks_follow_paragraphs_and_sentences() -> None:
    text = ("First paragraph. " * 30).strip() + "\n\n" + "Second one."
    chunks = chunk_text(text, size=200)
    assert all(len(c) <= 200 for c in chunks) and chunks[-1].endswith("Second one.")
    assert chunk_text("   \n\n  ") == []


async def test_knowledge_is_recalled_into_the_prompt_by_the_recall_ranker(tmp_path: Path) -> None:
    kb = tmp_path / "knowledge"
    kb.mkdir()
    topics = {"volcano": "The volcano Etna is in Sicily and erupts often.",
              "harbour": "The harbour master is called Ines and works nights.",
              "bakery": "The bakery on Rope Street sells rye bread on Sundays."}
    for i in range(40):
        (kb / f"filler{i:02d}.md").write_text(f"Filler page {i} about knots and ropes number {i}.", encoding="utf-8")
    for name, text in topics.items():
        (kb / f"{name}.md").write_text(text, encoding="utf-8")
    character_file = write_character(tmp_path, [{"directory": "."}])
    async with FakeOpenAI() as fake:
        settings = load_settings({"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url,
                                  "OPENAI_MODEL": "gpt-test", "CHARACTER_FILE": str(character_file),
                                  "DATA_DIR": str(tmp_path / "data"), "RECALL_BUDGET_MS": "2000"}, env_file=None)
        services = await build_services(settings)
        try:
            assert services.knowledge_task is not None
            await services.knowledge_task
            index = services.agent.knowledge
            assert isinstance(index, KnowledgeIndex) and index.recall is services.recall and len(index) == 43
            services.agent.context_budget = 5.0  # this test is about what is chosen, not how fast
            reply = services.agent.reply(Incoming("discord:1:2", "discord:7", "Maya",
                                                  "who is the harbour master?", Modality.TEXT))
            await reply.collect()
            body = fake.completion_requests[-1].body
            assert body is not None
            system = body["messages"][0]["content"]
            assert "Things you know:" in system and topics["harbour"] in system
            assert topics["volcano"] not in system and "Filler page" not in system
            # A second start with the same knowledge does not index it again.
            marks = await services.store.query("SELECT room FROM facts_rooms WHERE room LIKE 'knowledge-index:%'")
            assert len(marks) == 1
        finally:
            await services.aclose()


def test_the_default_character_has_no_knowledge_folder() -> None:
    character = parse_character({"name": "Wren", "knowledge": [{"path": "a.md"}]})
    assert load_knowledge(character) == []
