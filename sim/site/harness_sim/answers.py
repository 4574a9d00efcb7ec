"""The simulated "model": deterministic, right answers to the questions the cases ask.

`answer_text` is a pure function of the prompt. Rules, first match wins:

1. arithmetic: the LAST `<int> + <int>` in the prompt is the question (few-shot prompts put
   the real question last). If multiple-choice option lines `A. x` .. `D. x` follow it and
   one of them equals the sum -> "Answer: <letter>"; otherwise "The answer is <sum>."
2. a short story ("Let me tell you a short story") -> a fixed short story;
3. what animal is in a picture/image/photo -> a sentence naming a cat;
4. the capital of France -> a sentence naming Paris;
5. anything else -> a fixed polite sentence.

Arithmetic goes first because it keys on the final question, while the keyword rules could
be fooled by words in earlier few-shot examples.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

STORY = ("Once upon a time, in a small village by the sea, there lived a girl named Lina who "
         "collected shells. One morning she found a shell that hummed a quiet song. She followed "
         "its tune to a hidden cove, where an old turtle told her every story the ocean knew. "
         "From that day on, Lina listened to the sea, and the sea listened back. The end.")
CAT = "The animal in the picture is a cat, a small orange kitten resting on a blanket."
PARIS = "The capital of France is Paris."
POLITE = "Thank you for your question. I am a simulated model and have nothing more to add."
WRONG = "I do not know."

_SUM = re.compile(r"(\d+) \+ (\d+)")
# An option line: "A. 12", "B) 7" (the closing char varies between eval templates).
_OPTION = re.compile(r"^\s*([A-D])[.)]\s*(.+?)\s*$", re.MULTILINE)
_STORY = re.compile(r"\b(short story|tell (you|me) a story)\b", re.IGNORECASE)
_ANIMAL = re.compile(r"\banimals?\b", re.IGNORECASE)
_PICTURE = re.compile(r"\b(picture|image|photo|photograph)s?\b", re.IGNORECASE)
_WHAT_IN_PICTURE = re.compile(r"\bwhat(?:'s| is) (?:in|shown in) (?:the|this) "
                              r"(?:picture|image|photo)\b", re.IGNORECASE)
_FRANCE = re.compile(r"\bcapital (?:city )?of france\b|\bfrance'?s capital\b", re.IGNORECASE)


def _as_int(text: str) -> int | None:
    try:
        return int(text.strip().rstrip("."))
    except ValueError:
        return None


def _arithmetic(prompt: str) -> str | None:
    matches = list(_SUM.finditer(prompt))
    if not matches:
        return None
    last = matches[-1]
    total = int(last.group(1)) + int(last.group(2))
    # Only options after the question belong to it; earlier ones are few-shot examples.
    options: dict[str, str] = {}
    for option in _OPTION.finditer(prompt, last.end()):
        options.setdefault(option.group(1), option.group(2))
    if len(options) >= 2:
        for letter in sorted(options):
            if _as_int(options[letter]) == total:
                return f"Answer: {letter}"
    return f"The answer is {total}."


def answer_text(prompt: str) -> str:
    """The deterministic answer to `prompt` (see the module docstring for the rules)."""
    prompt = prompt or ""
    arithmetic = _arithmetic(prompt)
    if arithmetic is not None:
        return arithmetic
    if _STORY.search(prompt):
        return STORY
    if (_ANIMAL.search(prompt) and _PICTURE.search(prompt)) or _WHAT_IN_PICTURE.search(prompt):
        return CAT
    if _FRANCE.search(prompt):
        return PARIS
    return POLITE


def text_of_content(content: Any) -> str:
    """The text of an OpenAI message `content`: a string, or a list of parts (text, image...)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable) and not isinstance(content, (bytes, Mapping)):
        texts = [str(part.get("text", "")) for part in content
                 if isinstance(part, Mapping) and part.get("type", "text") == "text"]
        return "\n".join(t for t in texts if t)
    return str(content)


def has_image(messages: Any) -> bool:
    """True when any message carries an image part (what an encoder would be asked to encode)."""
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, Mapping) else None
        image_types = ("image_url", "image")
        if isinstance(content, list) and any(
                isinstance(p, Mapping) and p.get("type") in image_types for p in content):
            return True
    return False


def prompt_from_messages(messages: Any) -> str:
    """The prompt a chat request asks about: the user messages' text parts, joined."""
    if not isinstance(messages, list):
        return ""
    texts = [text_of_content(m.get("content")) for m in messages
             if isinstance(m, Mapping) and m.get("role", "user") == "user"]
    return "\n".join(t for t in texts if t)


def count_tokens(text: str) -> int:
    """A stand-in token count (whitespace words): stable, and good enough for `usage`."""
    return len(text.split())


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut `text` to `max_tokens` words; returns (text, was_cut) for finish_reason=length."""
    if max_tokens is None or max_tokens < 0:
        return text, False
    words = text.split()
    if len(words) <= max_tokens:
        return text, False
    return " ".join(words[:max_tokens]), True
