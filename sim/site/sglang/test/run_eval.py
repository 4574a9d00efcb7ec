"""SIMULATOR -- not SGLang. The harness's imitation of `sglang.test.run_eval.run_eval`.

`run_eval(args)` takes the same SimpleNamespace the real one does (base_url, eval_name,
num_examples, num_threads, and optionally model, api, max_tokens) and returns a metrics dict
with "score". Instead of downloading MMLU/GSM8K it asks the server a handful of generated
arithmetic questions over real HTTP, in the shape each eval uses:

- mmlu:  multiple choice (`A) ..` .. `D) ..`) on /v1/chat/completions, graded on "Answer: X";
- gsm8k: few-shot "Question: .. Answer: .." on /generate (api "completion", SGLang's default
  for this eval) or /v1/chat/completions (api "chat"), graded on the last number.

The score is the fraction answered right, so a server (or a PD pair, or a router) that answers
wrongly or not at all fails the payload's threshold exactly as it would for real.
"""
from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# The simulator asks at most this many questions per eval: enough to tell right from wrong.
MAX_SIM_EXAMPLES = 16
REQUEST_TIMEOUT_S = 30

_ANSWER_LETTER = re.compile(r"(?i)answer\s*:\s*\(?([A-D])\b")
_NUMBER = re.compile(r"-?\d+")
# The servers are on loopback: a proxy from the environment must never see this traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read().decode())


def _questions(count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(2, 499), rng.randint(2, 499)) for _ in range(count)]


def _chat(args, prompt: str) -> str:
    body = {"model": getattr(args, "model", None) or "default",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": getattr(args, "max_tokens", None) or 2048}
    reply = _post(f"{args.base_url}/v1/chat/completions", body)
    return reply["choices"][0]["message"]["content"] or ""


def _mmlu_one(args, question: tuple[int, int], index: int) -> bool:
    a, b = question
    right = a + b
    options = [right, right + 1 + index % 7, right - 3 - index % 5, right + 10]
    random.Random(index).shuffle(options)
    letters = "ABCD"
    prompt = ("Answer the following multiple choice question. The last line of your response "
              "should be of the following format: 'Answer: $LETTER' (without quotes) where "
              "LETTER is one of ABCD.\n\n"
              f"What is {a} + {b}?\n\n"
              + "\n".join(f"{letters[i]}) {value}" for i, value in enumerate(options)))
    match = _ANSWER_LETTER.search(_chat(args, prompt))
    return bool(match) and options[letters.index(match.group(1).upper())] == right


def _gsm8k_one(args, question: tuple[int, int], index: int) -> bool:
    a, b = question
    shots = "".join(f"Question: What is {x} + {y}?\nAnswer: The answer is {x + y}.\n\n"
                    for x, y in _questions(3, 1000 + index))
    prompt = f"{shots}Question: What is {a} + {b}?\nAnswer:"
    if getattr(args, "api", "completion") == "chat":
        text = _chat(args, prompt)
    else:
        body = {"text": prompt, "sampling_params": {
            "temperature": 0, "max_new_tokens": getattr(args, "max_tokens", None) or 512}}
        text = _post(f"{args.base_url}/generate", body)["text"]
    numbers = _NUMBER.findall(text or "")
    return bool(numbers) and int(numbers[-1]) == a + b


_EVALS = {"mmlu": _mmlu_one, "gsm8k": _gsm8k_one}


def run_eval(args) -> dict[str, Any]:
    """Run the (simulated) eval named by args.eval_name against args.base_url."""
    name = args.eval_name
    if name not in _EVALS:
        raise ValueError(f"simulated run_eval knows {sorted(_EVALS)}, not {name!r}")
    wanted = getattr(args, "num_examples", None) or MAX_SIM_EXAMPLES
    count = max(1, min(int(wanted), MAX_SIM_EXAMPLES))
    questions = _questions(count, seed=zlib.crc32(name.encode()))
    grade = _EVALS[name]

    def _one(item):
        index, question = item
        try:
            return grade(args, question, index)
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as error:
            print(f"[sim run_eval] {name} question {index} failed: {error}", flush=True)
            return False

    started = time.perf_counter()
    threads = max(1, min(int(getattr(args, "num_threads", 1) or 1), count))
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(_one, enumerate(questions)))
    latency = time.perf_counter() - started
    score = sum(results) / len(results)
    print(f"[sim run_eval] {name}: {sum(results)}/{len(results)} right "
          f"(asked {count} of {wanted} examples) on {args.base_url}", flush=True)
    print(f"Total latency: {latency:.3f} s", flush=True)
    print(f"Score: {score:.3f}", flush=True)
    return {"score": score, "latency": latency, "num_examples": count}
