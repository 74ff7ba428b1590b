"""The script for the built-in ELIZA engine (written for this project).

Format, after Weizenbaum (1966): each keyword has a rank and a list of *decomposition* rules. A
decomposition is a word pattern where ``*`` matches any run of words (possibly none) and
``@group`` matches one word of a synonym group; every other token matches itself. Each
decomposition has *reassembly* templates that are used in turn; ``(n)`` is replaced by the words
bound to the n-th ``*`` or ``@group`` component (1-based; literal words are not counted),
reflected (I -> you, my -> your...). ``{name}`` is the character's
name. A template ``goto KEY`` continues with keyword KEY's rules.

Keywords marked ``memory`` also store a remark for later ("Earlier you said your ..."), recalled
when nothing else in a message matches.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Decomposition",
    "FAREWELLS",
    "KEYWORDS",
    "MEMORY_TEMPLATES",
    "NO_MATCH",
    "PRE_SUBSTITUTIONS",
    "QUIT_WORDS",
    "REFLECTIONS",
    "REFLECTION_PAIRS",
    "Rule",
    "SYNONYMS",
]


@dataclass(frozen=True)
class Decomposition:
    pattern: str
    templates: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    words: tuple[str, ...]          # the keyword and its spellings
    rank: int
    decompositions: tuple[Decomposition, ...]
    memory: bool = False


def _d(pattern: str, *templates: str) -> Decomposition:
    return Decomposition(pattern, templates)


# Applied to the input before matching (whole words, lower case).
PRE_SUBSTITUTIONS: dict[str, str] = {
    "i'm": "i am", "im": "i am", "you're": "you are", "youre": "you are", "dont": "don't",
    "cant": "can't", "wont": "won't", "recollect": "remember", "recall": "remember",
    "dreamt": "dreamed", "dreams": "dream", "maybe": "perhaps", "certainly": "yes", "yeah": "yes",
    "yep": "yes", "nope": "no", "nah": "no", "machine": "computer", "machines": "computer",
    "computers": "computer", "robot": "computer", "robots": "computer", "bot": "computer",
    "ai": "computer", "u": "you", "ur": "your", "r": "are", "everybody": "everyone",
    "nobody": "noone", "thx": "thanks", "ty": "thanks",
}

# Two-word reflections first ("i am" -> "you are"), then single words.
REFLECTION_PAIRS: dict[tuple[str, str], str] = {
    ("i", "am"): "you are", ("i", "was"): "you were", ("you", "are"): "I am",
    ("you", "were"): "I was", ("are", "you"): "am I", ("were", "you"): "was I",
}
REFLECTIONS: dict[str, str] = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "am": "are",
    "i've": "you've", "i'll": "you'll", "i'd": "you'd", "your": "my", "yours": "mine",
    "yourself": "myself", "you've": "I've", "you'll": "I'll", "you'd": "I'd", "we": "you", "us": "you",
    "our": "your",
}

SYNONYMS: dict[str, tuple[str, ...]] = {
    "be": ("am", "is", "are", "was", "were"),
    "belief": ("feel", "think", "believe", "wish", "suppose"),
    "cannot": ("can't", "cannot", "couldn't"),
    "desire": ("want", "need", "crave", "wish"),
    "everyone": ("everyone", "noone", "nothing", "everything", "nowhere"),
    "family": ("mother", "mom", "mum", "father", "dad", "sister", "brother", "wife", "husband",
               "children", "kids", "son", "daughter", "parents", "family", "grandmother", "grandfather"),
    "happy": ("happy", "glad", "better", "great", "good", "excited", "cheerful"),
    "sad": ("sad", "unhappy", "depressed", "sick", "lonely", "tired", "miserable", "anxious", "stressed",
            "worried", "scared", "afraid"),
}

QUIT_WORDS: frozenset[str] = frozenset({"bye", "goodbye", "quit", "exit", "farewell", "goodnight"})

FAREWELLS: tuple[str, ...] = (
    "Goodbye. Thanks for talking with me.",
    "Take care. I'll be here if you want to talk again.",
    "Bye for now. It was good to hear from you.",
)

NO_MATCH: tuple[str, ...] = (
    "Please, go on.",
    "Tell me more about that.",
    "I'm not sure I follow. Could you put it another way?",
    "What does that suggest to you?",
    "How do you feel about that?",
    "That's interesting. Why do you bring it up?",
    "I see. And what happened then?",
)

MEMORY_TEMPLATES: tuple[str, ...] = (
    "Earlier you mentioned your (2). Tell me more about that.",
    "Let's go back to your (2). How do you feel about it now?",
    "Does any of this connect to what you said about your (2)?",
)

KEYWORDS: tuple[Rule, ...] = (
    Rule(("name",), 15, (
        _d("* my name is *", "Nice to meet you, (2). What's on your mind?",
           "Hello, (2). What would you like to talk about?"),
        _d("* your name *", "I'm {name}.", "My name is {name}. And yours?"),
        _d("*", "Names matter to you, don't they?", "Why do you ask about names?"),
    )),
    Rule(("who",), 12, (
        _d("* who are you *", "I'm {name}. I'm here to listen.", "I'm {name}, a conversation program."),
        _d("*", "goto what"),
    )),
    Rule(("computer",), 50, (
        _d("* are you * computer *", "Yes, I'm {name}, a computer program. Does that bother you?",
           "I am. {name} runs on a computer. What made you ask?"),
        _d("*", "Do computers worry you?", "Why do you mention computers?",
           "What do you think computers have to do with what's on your mind?",
           "Don't you think computers can help people?"),
    )),
    Rule(("sorry", "apologise", "apologize"), 0, (
        _d("*", "There's no need to apologise.", "Apologies aren't necessary here.",
           "What makes you feel you need to apologise?"),
    )),
    Rule(("thanks", "thank"), 0, (
        _d("*", "You're welcome.", "Any time.", "Glad to help. What else is on your mind?"),
    )),
    Rule(("remember",), 5, (
        _d("* i remember *", "Do you often think of (2)?", "What else comes to mind when you think of (2)?",
           "Why does (2) come back to you right now?", "What is it about (2) that stays with you?"),
        _d("* do you remember *", "Why do you think I would remember (2)?",
           "What about (2) would you like me to recall?", "You mentioned (2) before?"),
        _d("*", "goto none"),
    )),
    Rule(("forget",), 5, (
        _d("* i forget *", "Why do you think you forget (2)?", "Does forgetting (2) trouble you?"),
        _d("* did you forget *", "Why do you ask whether I forgot (2)?", "Should I remember (2)?"),
        _d("*", "goto none"),
    )),
    Rule(("if",), 3, (
        _d("* if *", "Do you really think it's likely that (2)?", "What would happen if (2)?",
           "Do you wish that (2)?", "What do you know about (2)?"),
    )),
    Rule(("dream", "dreamed"), 3, (
        _d("* i dreamed *", "Really, (2)?", "Have you ever imagined (2) while awake?",
           "Have you dreamed (2) before?"),
        _d("*", "What does that dream suggest to you?", "Do you dream often?",
           "Who appears in your dreams?", "Do your dreams say something about your worries?"),
    )),
    Rule(("perhaps",), 0, (
        _d("*", "You don't sound very sure.", "Why the hesitation?", "Can't you be more certain?",
           "Not sure, then?"),
    )),
    Rule(("hello", "hi", "hey", "greetings", "howdy", "hiya"), 0, (
        _d("*", "Hello, I'm {name}. What's on your mind?", "Hi there. How are you feeling today?",
           "Hey. What would you like to talk about?"),
    )),
    Rule(("am",), 0, (
        _d("* am i *", "Do you believe you are (2)?", "Would you like to be (2)?",
           "Do you wish I would tell you that you are (2)?", "What would it mean if you were (2)?"),
        _d("*", "goto i"),
    )),
    Rule(("are",), 0, (
        _d("* are you *", "Why does it matter to you whether I am (2)?",
           "Would you prefer it if I weren't (2)?", "Perhaps I am (2) in your imagination.",
           "Do you sometimes think I am (2)?"),
        _d("* are *", "Did you think they might not be (2)?", "Would you like it if they weren't (2)?",
           "What if they weren't (2)?"),
    )),
    Rule(("your",), 0, (
        _d("* your *", "Why are you interested in my (2)?", "What about your own (2)?",
           "Are you curious about someone else's (2)?"),
    )),
    Rule(("was",), 2, (
        _d("* was i *", "What if you were (2)?", "Do you think you were (2)?", "Were you (2)?",
           "What would it mean if you were (2)?"),
        _d("* i was *", "Were you really?", "Why tell me you were (2) now?",
           "Perhaps I already knew you were (2)."),
        _d("* was you *", "Would you like to believe I was (2)?", "What suggests that I was (2)?"),
        _d("*", "goto none"),
    )),
    Rule(("i",), 0, (
        _d("* i @desire *", "What would it mean to you if you got (3)?", "Why do you want (3)?",
           "Suppose you got (3) soon. What then?", "What if you never got (3)?"),
        _d("* i am * @sad *", "I'm sorry to hear that you are (3).",
           "Do you think talking about it might help you feel less (3)?",
           "Being (3) is hard. What do you think is behind it?"),
        _d("* i am * @happy *", "That's good to hear. What has made you (3)?",
           "What makes you (3) right now?", "Can you explain why you are suddenly (3)?"),
        _d("* i was *", "goto was"),
        _d("* i @belief * i *", "Do you really think so?", "But you're not sure you (4).",
           "Do you really doubt you (4)?"),
        _d("* i @belief * you *", "goto you"),
        _d("* i am *", "Is it because you are (2) that you came to talk to me?",
           "How long have you been (2)?", "Do you think it's normal to be (2)?",
           "How do you feel about being (2)?"),
        _d("* i @cannot *", "How do you know you can't (3)?", "Have you tried?",
           "Perhaps you could (3) now.", "Do you really want to be able to (3)?"),
        _d("* i don't *", "Don't you really (2)?", "Why don't you (2)?", "Do you wish you could (2)?",
           "Does that trouble you?"),
        _d("* i feel *", "Tell me more about those feelings.", "Do you often feel (2)?",
           "When do you usually feel (2)?", "What do you do when you feel (2)?"),
        _d("* i * you *", "Perhaps in your mind we (2) each other.", "Do you wish to (2) me?",
           "You seem to need to (2) me.", "Do you (2) anyone else?"),
        _d("*", "You say (1)?", "Can you say more about that?", "Do you say (1) for a particular reason?",
           "That's quite interesting."),
    )),
    Rule(("you",), 0, (
        _d("* you remind me of *", "goto alike"),
        _d("* you are *", "What makes you think I am (2)?", "Does it please you to believe I am (2)?",
           "Do you sometimes wish you were (2)?", "Perhaps you would like to be (2)."),
        _d("* you * me *", "Why do you think I (2) you?", "You like to think I (2) you, don't you?",
           "What makes you think I (2) you?", "Suppose I did (2) you. What would that mean?"),
        _d("* you *", "We were talking about you, not me.", "Oh, I (2)?",
           "You're not really talking about me, are you?", "What are your feelings now?"),
    )),
    Rule(("yes",), 0, (
        _d("*", "You seem quite sure.", "You're certain?", "I see.", "I understand."),
    )),
    Rule(("no",), 0, (
        _d("* no one *", "goto everyone"),
        _d("*", "Are you saying no just to be contrary?", "You sound a little negative.", "Why not?",
           "Why 'no'?"),
    )),
    Rule(("my",), 2, (
        _d("* my * @family *", "Tell me more about your family.", "Who else in your family (4)?",
           "Your (3)?", "What else comes to mind when you think of your (3)?"),
        _d("* my *", "Your (2)?", "Why do you say your (2)?",
           "Does that say something about other things that belong to you?",
           "Is it important to you that your (2)?"),
    ), memory=True),
    Rule(("can",), 0, (
        _d("* can you *", "You believe I can (2), don't you?", "You want me to be able to (2).",
           "Perhaps you would like to be able to (2) yourself."),
        _d("* can i *", "Whether or not you can (2) depends on you more than on me.",
           "Do you want to be able to (2)?", "Perhaps you don't want to (2)."),
        _d("*", "goto what"),
    )),
    Rule(("what", "how", "when", "where"), 0, (
        _d("*", "Why do you ask?", "Does that question interest you?", "What is it you really want to know?",
           "Are such questions often on your mind?", "What answer would please you most?",
           "What do you think?", "What comes to mind when you ask that?"),
    )),
    Rule(("why",), 0, (
        _d("* why don't you *", "Do you believe I don't (2)?", "Perhaps I will (2) in good time.",
           "Should you (2) yourself?", "You want me to (2)?"),
        _d("* why can't i *", "Do you think you should be able to (2)?", "Do you want to be able to (2)?",
           "Do you believe this will help you to (2)?", "Have you any idea why you can't (2)?"),
        _d("*", "goto what"),
    )),
    Rule(("because",), 0, (
        _d("*", "Is that the real reason?", "Don't any other reasons come to mind?",
           "Does that reason explain anything else?", "What other reasons might there be?"),
    )),
    Rule(("everyone", "noone"), 2, (
        _d("* @everyone *", "Really, (2)?", "Surely not (2).", "Can you think of anyone in particular?",
           "Who, for example?", "Are you thinking of someone special?"),
    )),
    Rule(("always", "never"), 1, (
        _d("*", "Can you think of a specific example?", "When?", "What incident are you thinking of?",
           "Really, every time?"),
    )),
    Rule(("alike", "same", "similar"), 10, (
        _d("*", "In what way?", "What resemblance do you see?", "What does that similarity suggest to you?",
           "What other connections do you see?", "How?"),
    )),
    Rule(("like",), 10, (
        _d("* @be * like *", "goto alike"),
        _d("*", "goto none"),
    )),
)
