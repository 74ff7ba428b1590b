"""Long-term recall: every turn (and later facts, summaries, knowledge chunks) searchable, to the right audience.

The interface other rooms use (s5-facts builds facts, summaries and character knowledge on it)::

    from bot.recall import Audience, Hit, Recall

    recall = Recall(services.store)            # bot/store's async Database, SQLite or PostgreSQL
    await recall.start()                       # db.migrate("recall", ...): its own tables

    # The turn-append path feeds it (one hook in bot/memory.py); turns are searchable at once.
    await recall.add_turn(turn, turn_id=row_id)

    # Other documents carry their audience from the moment they are stored.
    doc_id = await recall.add_document("fact", "Maya's sister marries in Lisbon in June",
                                       audience=Audience.of_room("discord:1:2"),
                                       speaker_id="discord:42", speaker_name="Maya",
                                       created_at=when, sources=(turn_id, ...), ref="fact:17")
    await recall.add_documents([{"kind": "knowledge", "text": chunk, "audience": Audience.everyone(),
                                 "ref": "knowledge:file.md#3"}, ...])   # many at once, one transaction
    await recall.remove_document(doc_id)       # or remove(kind=..., ref=...), remove_turns(ids),
                                               # forget_identities(ids), prune(older_than), scrub()

    hits = await recall.search("where is my sister's wedding?",
                               asker="discord:42",            # who asks (linked identities count)
                               place="discord:1:2",          # where the answer will be read/heard
                               visible={"discord:1:2", ...},  # guild rooms the asker can see (None: place only)
                               limit=5, kinds=("turn", "fact"))
    for hit in hits:
        hit.text, hit.speaker_name, hit.place, hit.created_at, hit.score, hit.kind, hit.sources

    # The prompt side (bot/agent calls these): Agent.memories_for(incoming, history, said_at=...) searches
    # under RECALL_BUDGET_MS; bot.recall.prompt.format_memories(hits, place=, now=, max_tokens=) renders them.

Audience rules (enforced in the SQL of every search, never after it):

- a Discord guild channel's words come back only in that guild, and only from channels in ``visible``
  (the transport computes it from discord.py permissions; without it only ``place`` itself is searched);
- a private room's words (Discord DM, SMS, phone call, console) come back only when ``place`` is one of
  the asker's own private rooms, and only from the asker's own private rooms (linked identities count);
- ``Audience.everyone()`` documents (character knowledge) come back everywhere.

Ranking (:mod:`bot.recall.ranker`): lexical candidates (SQLite FTS5 with the porter tokenizer, or
PostgreSQL full-text with a GIN index) re-scored with the speaker, the people the question names, the
dates it names ("yesterday", "last Tuesday", "in June"), the turns around a hit, and recency.
``kinds`` selects document kinds: ``turn``, ``fact``, ``summary``, ``knowledge`` (any short string).
"""

from __future__ import annotations

from bot.recall.audience import Audience
from bot.recall.index import Hit, Recall, RecallConfig

__all__ = ["Audience", "Hit", "Recall", "RecallConfig"]
