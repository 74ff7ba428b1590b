"""Synthetic multi-session community conversations with known evidence, for bench.memory.

``python -m bench.memory_data --out FILE [--conversations N] [--seed S]`` writes the issue's format::

    {"conversations": [{"id", "speakers", "split": "dev" | "heldout",
                        "sessions": [{"date": "2023-05-08T13:56", "turns": [{"id", "speaker", "text"}]}],
                        "questions": [{"question", "answer", "evidence": [turn ids], "type"}]}]}

Each conversation is a small community (3–5 people) talking over 6–10 dated sessions days apart:
chit-chat with common words, and facts about each person planted in single turns. Questions are
asked by someone else and name the person; their evidence is the planted turn(s). What makes them
hard for plain single-turn lexical search, on purpose and in known proportions:

- ``paraphrase``: the question shares only one or two content words with the evidence;
- ``context``: the answer is a reply ("We called him Biscuit") to a question that holds the topic
  words ("What did you name the puppy?"): the evidence turn shares nothing with the question;
- ``speaker``: the same topic words come from several people; only the named person's turn counts;
- ``update``: a later session changes an earlier fact; both turns are the evidence ("where does Ana
  live now, and where before?");
- ``dated``: the question names the session's month and year; other sessions hold the same topic.

The seed fixes everything; conversations alternate between the ``dev`` split (weights were tuned on
it) and the ``heldout`` split (never looked at while tuning). Left out: real people's ways of talking
(typos, long stories, several topics in one turn), which is what the hidden set measures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["generate", "main"]

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemi", "Luca", "Maya",
         "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Vera", "Wen", "Yara", "Zoe"]
CITIES = ["Lisbon", "Porto", "Oslo", "Kyoto", "Nairobi", "Lima", "Krakow", "Seville", "Tallinn", "Hanoi", "Dakar",
          "Montreal", "Quito", "Bergen", "Valencia", "Tbilisi"]
PETS = [("puppy", "dog"), ("kitten", "cat"), ("parrot", "bird"), ("rabbit", "bunny"), ("hamster", "pet")]
PET_NAMES = ["Biscuit", "Pepper", "Mochi", "Ziggy", "Noodle", "Olive", "Pickle", "Juniper", "Waffle", "Clover"]
HOBBIES = [("pottery", "throwing bowls on the wheel"), ("climbing", "bouldering at the gym"),
           ("watercolour", "painting landscapes in watercolour"), ("chess", "playing chess in the park"),
           ("sourdough", "baking sourdough bread"), ("salsa", "dancing salsa on Thursdays"),
           ("birdwatching", "watching herons by the river"), ("woodwork", "building a bookshelf from oak")]
JOBS = ["nurse", "carpenter", "data analyst", "teacher", "chef", "pilot", "librarian", "architect", "paramedic"]
INSTRUMENTS = ["cello", "banjo", "trumpet", "ukulele", "drums", "violin", "harmonica"]
BOOKS = ["a thriller about a lighthouse keeper", "a history of the silk road", "a novel about twin sisters",
         "a memoir by a mountain guide", "a cookbook of Georgian food", "a biography of a chess champion"]
CHITCHAT = [
    "haha yes that is so true", "honestly the week went by so fast", "did anyone watch the game last night?",
    "I need more coffee today", "the weather has been strange lately", "that sounds like a lot of fun",
    "I know right, it was a long day at work", "we should all meet up again soon", "I am so tired after work",
    "that is a great idea, let us do it", "how is everyone doing today?", "good to see you all again",
    "the traffic this morning was terrible", "I finally cleaned the whole flat", "what is everyone up to this weekend?",
    "lol same here", "I could use a holiday to be honest", "the new cafe downtown is really good",
    "it rained all day here", "my phone died again", "I have been sleeping badly this week",
    "the train was late again today", "we had pizza for dinner", "work has been busy but fine",
    "did you see the news about the new park?", "I tried a new recipe, it was okay",
    "my neighbour's dog barked all night", "someone said the concert in the park was great",
    "the city is planning a new bike lane", "I started running again, slowly", "sounds good to me",
]


def _turn(turns: list[dict[str, Any]], cid: str, speaker: str, text: str) -> str:
    tid = f"{cid}-t{len(turns) + 1}"
    turns.append({"id": tid, "speaker": speaker, "text": text})
    return tid


class _Conversation:
    def __init__(self, rng: random.Random, index: int, start: datetime) -> None:
        self.rng = rng
        self.id = f"c{index + 1}"
        self.speakers = rng.sample(NAMES, rng.randint(3, 5))
        n_sessions = rng.randint(6, 10)
        self.dates: list[datetime] = []
        when = start + timedelta(days=rng.randint(0, 20), hours=rng.randint(9, 20), minutes=rng.randint(0, 59))
        for _ in range(n_sessions):
            self.dates.append(when)
            when += timedelta(days=rng.randint(4, 25), hours=rng.randint(-3, 3))
        self.sessions: list[list[dict[str, Any]]] = [[] for _ in self.dates]
        self.all_turns: list[dict[str, Any]] = []
        self.questions: list[dict[str, Any]] = []

    def _say(self, session: int, speaker: str, text: str) -> str:
        turns = self.sessions[session]
        tid = f"{self.id}-s{session + 1}-t{len(turns) + 1}"
        turns.append({"id": tid, "speaker": speaker, "text": text})
        return tid

    def _chat(self, session: int, n: int, avoid: str | None = None) -> None:
        for _ in range(n):
            who = self.rng.choice([s for s in self.speakers if s != avoid] or self.speakers)
            self._say(session, who, self.rng.choice(CHITCHAT))

    def _other(self, person: str) -> str:
        return self.rng.choice([s for s in self.speakers if s != person])

    def plant(self) -> None:
        rng = self.rng
        kinds = ["pet", "wedding", "hobby", "job", "instrument", "book", "move", "trip"]
        for session in range(len(self.dates)):
            self._chat(session, rng.randint(3, 7))
        for person in self.speakers:
            for kind in rng.sample(kinds, 3):
                session = rng.randrange(len(self.dates))
                getattr(self, f"_{kind}")(person, session)
                self._chat(session, rng.randint(1, 4))
        for session in range(len(self.dates)):
            self._chat(session, rng.randint(3, 8))

    # --- planted facts -------------------------------------------------------------------------

    def _q(self, question: str, answer: str, evidence: Sequence[str], type_: str) -> None:
        self.questions.append({"question": question, "answer": answer, "evidence": list(evidence), "type": type_})

    def _pet(self, person: str, session: int) -> None:
        animal, word = self.rng.choice(PETS)
        name = self.rng.choice(PET_NAMES)
        asker = self._other(person)
        self._say(session, person, f"We finally adopted a little {animal} this weekend!")
        self._say(session, asker, f"Aww congratulations! What did you name the {animal}?")
        ev = self._say(session, person, f"We called him {name}, the kids chose it.")
        self._q(f"What is the name of {person}'s {word}?", name, [ev], "context")

    def _wedding(self, person: str, session: int) -> None:
        city, month = self.rng.choice(CITIES), self.rng.choice(["May", "June", "July", "September"])
        ev = self._say(session, person, f"Big news, my sister is getting married in {city} in {month}!")
        self._say(session, self._other(person), "That is wonderful, congratulations to her!")
        self._q(f"Where is {person}'s sister's wedding?", city, [ev], "paraphrase")

    def _hobby(self, person: str, session: int) -> None:
        hobby, detail = self.rng.choice(HOBBIES)
        ev = self._say(session, person, f"Lately I spend my evenings {detail}, it really calms me down.")
        other = self._other(person)
        self._say(session, other, f"I tried {hobby} once, it was harder than it looks.")  # a distractor
        self._q(f"What does {person} do in the evenings to relax?", hobby, [ev], "speaker")

    def _job(self, person: str, session: int) -> None:
        job = self.rng.choice(JOBS)
        self._say(session, self._other(person), f"{person}, how is the new job going?")
        ev = self._say(session, person, f"Really well, being a {job} suits me, the team is lovely.")
        self._q(f"What is {person}'s profession?", job, [ev], "context")

    def _instrument(self, person: str, session: int) -> None:
        instrument = self.rng.choice(INSTRUMENTS)
        ev = self._say(session, person, f"I signed up for {instrument} lessons, first class was on Monday.")
        self._q(f"Which instrument is {person} learning to play?", instrument, [ev], "paraphrase")

    def _book(self, person: str, session: int) -> None:
        book = self.rng.choice(BOOKS)
        month = self.dates[session].strftime("%B %Y")
        ev = self._say(session, person, f"I am reading {book} right now, cannot put it down.")
        later = (session + 2) % len(self.dates)
        if later != session:
            self._say(later, person, f"Also reading {self.rng.choice(BOOKS)} now, the last one was great.")
        self._q(f"What book was {person} reading in {month}?", book, [ev], "dated")

    def _move(self, person: str, session: int) -> None:
        first, second = self.rng.sample(CITIES, 2)
        ev1 = self._say(session, person, f"I moved to {first} last month, still unpacking boxes.")
        later = min(len(self.dates) - 1, session + self.rng.randint(2, 4))
        if later == session:
            self._q(f"Which city did {person} move to?", first, [ev1], "paraphrase")
            return
        ev2 = self._say(later, person, f"Guess what, I am relocating again, this time to {second} for work.")
        self._q(f"Where did {person} live before {second}, and where do they live now?", f"{first}, then {second}",
                [ev1, ev2], "update")

    def _trip(self, person: str, session: int) -> None:
        city = self.rng.choice(CITIES)
        other = self._other(person)
        self._say(session, other, f"{person}, where are you going on holiday this summer?")
        ev = self._say(session, person, f"{city}! Booked the flights yesterday, two whole weeks.")
        self._q(f"Where is {person} travelling for the summer holiday?", city, [ev], "context")

    def to_json(self, split: str) -> dict[str, Any]:
        return {
            "id": self.id, "speakers": self.speakers, "split": split,
            "sessions": [{"date": d.strftime("%Y-%m-%dT%H:%M"), "turns": t} for d, t in zip(self.dates, self.sessions,
                                                                                         strict=True)],
            "questions": self.questions,
        }


def generate(conversations: int = 20, seed: int = 23) -> dict[str, Any]:
    """The data set: ``conversations`` conversations, alternately dev and held-out."""
    rng = random.Random(seed)
    out = []
    for i in range(conversations):
        conv = _Conversation(rng, i, datetime(2023, 1, 2) + timedelta(days=rng.randint(0, 120)))
        conv.plant()
        out.append(conv.to_json("dev" if i % 2 == 0 else "heldout"))
    return {"conversations": out, "seed": seed}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args(argv)
    data = generate(args.conversations, args.seed)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n_q = sum(len(c["questions"]) for c in data["conversations"])
    print(json.dumps({"conversations": len(data["conversations"]), "questions": n_q, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
