"""Regenerates tokenizer/ (a tiny byte-level BPE tokenizer) -- a developer tool, not imported.

The real sglang-router loads `tokenizer.json` from a worker's model_path; the simulator
reports tokenizer/ as model_path (HARNESS_SIM_MODEL_DIR=auto) so no model hub is asked.
Byte-level BPE can encode and decode any text, so whatever the router tokenizes works.

    python -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers
    /tmp/tok/bin/python sim/site/harness_sim/make_tokenizer.py
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent / "tokenizer"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, the template family of the cases' Qwen models; the router may render it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main() -> None:
    import sys
    sys.path.insert(0, str(HERE.parent.parent))
    from harness_sim import answers

    corpus = [answers.STORY, answers.CAT, answers.PARIS, answers.POLITE, answers.WRONG,
              "Let me tell you a short story", "What animal is in the picture?",
              "Where is the capital of France?", "What is 12 + 30? Answer: A B C D"]
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    HERE.mkdir(exist_ok=True)
    tokenizer.save(str(HERE / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "comment": "harness simulator: a tiny tokenizer, not a real model's",
    }
    (HERE / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {HERE}: vocab {tokenizer.get_vocab_size()}")


if __name__ == "__main__":
    main()
