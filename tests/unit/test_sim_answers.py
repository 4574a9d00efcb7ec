"""The simulated model's deterministic answers (sim/site/harness_sim/answers.py)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

SIM_SITE = Path(__file__).resolve().parents[2] / "sim" / "site"
if str(SIM_SITE) not in sys.path:
    sys.path.append(str(SIM_SITE))

from harness_sim import answers
from harness_sim.answers import answer_text


def test_story_is_fixed_and_short() -> None:
    story = answer_text("Let me tell you a short story ")
    assert story == answers.STORY == answer_text("Let me tell you a short story ")
    assert 20 < len(story.split()) < 120


@pytest.mark.parametrize("prompt", ["What animal is in the picture?",
                                    "Which animal can you see in this image?",
                                    "what animals are in the photo", "What is in the image?"])
def test_animal_in_picture_is_a_cat(prompt: str) -> None:
    assert re.search(r"cat|kitten|feline", answer_text(prompt), re.IGNORECASE)


def test_animal_without_a_picture_is_not_the_cat_rule() -> None:
    assert answer_text("Name an animal that lives in water.") == answers.POLITE


@pytest.mark.parametrize("prompt", ["Where is the capital of France?",
                                    "What is the capital city of France?",
                                    "Tell me France's capital."])
def test_capital_of_france_is_paris(prompt: str) -> None:
    assert "paris" in answer_text(prompt).lower()


def test_arithmetic_free_form() -> None:
    assert answer_text("What is 12 + 30?") == "The answer is 42."


def test_arithmetic_uses_the_last_question() -> None:
    prompt = "Q: 1 + 1\nA: The answer is 2.\nQ: 20 + 22\nA:"
    assert answer_text(prompt) == "The answer is 42."


def test_arithmetic_multiple_choice_picks_the_letter() -> None:
    prompt = "Question: What is 3 + 4?\nA. 5\nB. 6\nC. 7\nD. 8\nAnswer:"
    assert answer_text(prompt) == "Answer: C"


def test_multiple_choice_few_shot_ignores_earlier_options() -> None:
    prompt = ("The following are multiple choice questions (with answers).\n\n"
              "What is 1 + 1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n"
              "What is 10 + 5?\nA. 14\nB. 16\nC. 17\nD. 15\nAnswer:")
    assert answer_text(prompt) == "Answer: D"


def test_multiple_choice_with_no_matching_option_falls_back_to_the_sum() -> None:
    prompt = "What is 2 + 2?\nA. 1\nB. 2\nC. 3\nD. 5\nAnswer:"
    assert answer_text(prompt) == "The answer is 4."


def test_options_before_the_question_do_not_count() -> None:
    prompt = "A. 7\nB. 9\nC. 1\nD. 0\nNow compute 3 + 4."
    assert answer_text(prompt) == "The answer is 7."


def test_arithmetic_wins_over_keywords_in_earlier_examples() -> None:
    prompt = "Example: the capital of France is Paris.\nWhat is 2 + 5?"
    assert answer_text(prompt) == "The answer is 7."


@pytest.mark.parametrize("prompt", ["", "Hello there", "Summarise this text."])
def test_anything_else_is_polite(prompt: str) -> None:
    assert answer_text(prompt) == answers.POLITE


def test_wrong_answer_has_none_of_the_right_content() -> None:
    assert not re.search(r"cat|kitten|feline|paris|\d", answers.WRONG, re.IGNORECASE)


def test_chat_prompt_joins_user_text_parts() -> None:
    messages = [
        {"role": "system", "content": "You are helpful. capital of France"},
        {"role": "user", "content": [
            {"type": "text", "text": "What animal is"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
            {"type": "text", "text": "in the picture?"}]},
    ]
    assert answers.prompt_from_messages(messages) == "What animal is\nin the picture?"
    assert answers.has_image(messages)
    assert not answers.has_image([{"role": "user", "content": "hi"}])
    assert "cat" in answer_text(answers.prompt_from_messages(messages))


def test_text_of_content_shapes() -> None:
    assert answers.text_of_content("plain") == "plain"
    assert answers.text_of_content(None) == ""
    assert answers.text_of_content([{"type": "text", "text": "a"}, "junk"]) == "a"


def test_truncate_and_count() -> None:
    assert answers.truncate("a b c", 2) == ("a b", True)
    assert answers.truncate("a b c", 3) == ("a b c", False)
    assert answers.truncate("a b c", None) == ("a b c", False)
    assert answers.count_tokens("one two  three") == 3
