"""The task tokenizer: a byte-level BPE trained offline with `tokenizers` on the tiny task's text.

Same recipe as training/build_tokenizer.py (GPT-2 style byte-level BPE, `<|endoftext|>` = id 0 =
EOS and pad, no BOS, no post-processor), but trained only on the task's prompts and answers in
MoE-LLaVA's chat template, so the vocabulary is small (VOCAB_SIZE ids) and every task word is
one token. Stored in each trained checkpoint's tokenizer.json.
"""

from __future__ import annotations

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from mote_edge.chat import ASSISTANT, DEFAULT_SYSTEM, USER
from mote_edge.tokenizer import EOS_TOKEN, Tokenizer

from .data import corpus_lines

VOCAB_SIZE = 512


def _corpus() -> list[str]:
    out = []
    from .data import CAPTION_QUESTION
    for line in corpus_lines():
        if line.startswith(CAPTION_QUESTION):
            q, a = CAPTION_QUESTION, line[len(CAPTION_QUESTION) + 1:]
        else:
            q, a = line.rsplit(" ", 1)
        # the two chunks encode_prompt encodes around the image placeholder, and the answer
        out += [f"{DEFAULT_SYSTEM}{USER}", f"\n{q}{ASSISTANT}", f" {a}"]
    out += [f" {n}" for n in range(10)] * 50
    return out


def build_task_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return Tokenizer.from_str(tok.to_str())


if __name__ == "__main__":
    t = build_task_tokenizer()
    print("vocab", t.vocab_size, "eos", t.eos_id)
    from mote_edge.chat import encode_prompt
    ids = encode_prompt(t, "What color is the star?", True)
    print(len(ids), ids)
    print([t.decode([i]) for i in t.encode(" red")], t.encode(" 3"), t.encode(" yes"))
