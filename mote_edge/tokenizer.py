"""Text front-end: a thin wrapper over a HF `tokenizers` tokenizer.json, plus streaming decode.

`Tokenizer.encode` never adds special tokens and treats text that looks like a special token
(e.g. "<|endoftext|>" typed by a user) as plain text, so `decode(encode(s)) == s` for every string
of a byte-level tokenizer and user text can never inject control ids. Callers append `eos_id`
(training) or prepend `bos_id` (mote_edge.chat) themselves.

`IncrementalDecoder` turns a stream of generated ids into text pieces whose concatenation equals
`decode(all ids)`; a UTF-8 character split across tokens is held back until it is complete.
"""

from __future__ import annotations

import codecs
import importlib.resources
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders

from mote_edge.errors import TokenizerError

EOS_TOKEN = "<|endoftext|>"
DEFAULT_ASSET = "tokenizer.json"  # in the mote_edge.assets folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode symbol -> byte map, the inverse of the ByteLevel alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    """A tokenizer.json with explicit BOS / EOS ids.

    bos_token_id: prepended once by `mote_edge.chat.encode_prompt`; None = the model has no BOS.
    eos_token_id: ends generation; None = the id of `<|endoftext|>` if the vocabulary has it.
    Sets `tok.encode_special_tokens = True` on the wrapped tokenizer (see the module docstring).
    """

    def __init__(self, tok: tokenizers.Tokenizer, bos_token_id: int | None = None,
                 eos_token_id: int | None = None) -> None:
        self._tok = tok
        # User text is always plain text: "<|endoftext|>" in a prompt is not the EOS id.
        self._tok.encode_special_tokens = True
        self._vocab_size = tok.get_vocab_size(with_added_tokens=True)
        if eos_token_id is None:
            eos_token_id = tok.token_to_id(EOS_TOKEN)
        for name, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
            if value is not None and not 0 <= value < self._vocab_size:
                raise TokenizerError(f"{name} {value} is out of range for a vocabulary of {self._vocab_size}")
        self.bos_id: int | None = bos_token_id
        self.eos_id: int | None = eos_token_id
        self._token_bytes: list[bytes] | None = None  # built on first streaming decode

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, bos_token_id: int | None = None,
                  eos_token_id: int | None = None) -> "Tokenizer":
        """Load a tokenizer.json; a missing or corrupt file raises TokenizerError naming it."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerError(f"cannot read tokenizer {p}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"cannot read tokenizer {p}: {_first_line(exc)}") from None
        return cls.from_str(text, bos_token_id, eos_token_id, source=str(p))

    @classmethod
    def from_str(cls, json_text: str, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, source: str = "<string>") -> "Tokenizer":
        """Build from the text of a tokenizer.json."""
        try:
            tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as exc:  # tokenizers raises plain Exception for bad JSON
            raise TokenizerError(f"cannot read tokenizer {source}: not a valid tokenizer.json "
                                 f"({_first_line(exc)})") from None
        return cls(tok, bos_token_id, eos_token_id)

    @classmethod
    def default(cls) -> "Tokenizer":
        """The shipped byte-level BPE that synth checkpoints carry (built by training/build_tokenizer.py)."""
        res = importlib.resources.files("mote_edge") / "assets" / DEFAULT_ASSET
        try:
            text = res.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenizerError(f"cannot read tokenizer {res}: {_first_line(exc)}") from None
        return cls.from_str(text, source=str(res))

    # -- encode / decode ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding table may be padded larger)."""
        return self._vocab_size

    def post_processor_specials(self) -> tuple[list[int], list[int]]:
        """(ids the tokenizer.json post-processor puts before text, ids it puts after): what
        `tokenizer(text)` in transformers adds with its default add_special_tokens=True."""
        probe = "a b"
        plain = self._tok.encode(probe, add_special_tokens=False).ids
        full = self._tok.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        raise TokenizerError("the tokenizer's post-processor changes the text's own tokens; not supported")

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        """Text -> ids, with no special tokens added (no BOS, no EOS)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text; special tokens (e.g. EOS) are dropped unless skip_special_tokens=False."""
        self._check_ids(ids)
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_str(self) -> str:
        """The tokenizer.json text (stored in .mote metadata)."""
        return self._tok.to_str()

    def special_ids(self) -> set[int]:
        """Ids of the special added tokens (those `decode` skips by default)."""
        return {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def _check_ids(self, ids: Iterable[int]) -> None:
        for i in ids:
            if not 0 <= i < self._vocab_size:
                raise TokenizerError(f"token id {i} is out of range for a vocabulary of {self._vocab_size}")

    def token_bytes(self) -> list[bytes] | None:
        """Per id, the bytes the ByteLevel decoder emits for it (length vocab_size); None for a
        tokenizer whose decoder is not ByteLevel."""
        if not isinstance(self._tok.decoder, decoders.ByteLevel):
            return None
        if self._token_bytes is None:
            table = _byte_decoder()
            added = self._tok.get_added_tokens_decoder()
            out: list[bytes] = []
            for i in range(self._vocab_size):
                token = added[i].content if i in added else self._tok.id_to_token(i)
                if token is None:
                    out.append(b"")
                    continue
                # Same rule as the Rust ByteLevel decoder: map every char through the byte
                # alphabet, or, if any char is outside it (an added token), use its UTF-8.
                try:
                    out.append(bytes(table[c] for c in token))
                except KeyError:
                    out.append(token.encode("utf-8"))
            self._token_bytes = out
        return self._token_bytes

    def incremental_decoder(self, skip_special_tokens: bool = True) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special_tokens)


def bos_of_tokenizer(tokenizer: Tokenizer, tokenizer_config: dict | None = None, warn=None) -> int | None:
    """The BOS id a checkpoint's prompts start with, as transformers' AutoTokenizer adds it: the
    tokenizer.json post-processor decides (transformers 5 loads every fast tokenizer that way).
    config.json's bos_token_id is only a name (Qwen2.5 names one its tokenizer never adds).

    A tokenizer_config.json `add_bos_token` that contradicts the post-processor is reported through
    `warn` (the post-processor wins); a post-processor that adds more than one id before the text,
    or any after it (an EOS per chunk), is refused.
    """
    before, after = tokenizer.post_processor_specials()
    if after or len(before) > 1:
        raise TokenizerError(f"the tokenizer adds {len(before)} id(s) before and {len(after)} after every text; "
                             f"only a single BOS before the text is supported")
    bos = before[0] if before else None
    flag = (tokenizer_config or {}).get("add_bos_token")
    if isinstance(flag, bool) and flag != (bos is not None) and warn is not None:
        warn(f"tokenizer_config.json says add_bos_token={str(flag).lower()} but tokenizer.json's post-processor "
             f"{'adds' if bos is not None else 'adds no'} BOS; following tokenizer.json as transformers does")
    return bos


class IncrementalDecoder:
    """Streaming detokenizer: `feed(id)` returns the text completed by that id (maybe "").

    Never returns a partial UTF-8 character; `flush()` returns what is left at the end (a
    dangling partial character becomes U+FFFD there, exactly as `decode` would render it), so
    "".join(pieces) + flush() == tokenizer.decode(ids, skip_special_tokens).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._bytes = tokenizer.token_bytes()
        self._special = tokenizer.special_ids()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Fallback for non-ByteLevel decoders: re-decode a short window and emit the new suffix.
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that gives context to the next piece
        self._read = 0  # ids before this index have been emitted

    def feed(self, token_id: int) -> str:
        """Add one generated id; return the newly completed text."""
        self._tok._check_ids((token_id,))
        if self._skip and token_id in self._special:
            return ""
        if self._bytes is not None:
            return self._utf8.decode(self._bytes[token_id])
        self._ids.append(token_id)
        return self._window(final=False)

    def flush(self) -> str:
        """End of stream: return any held-back text."""
        if self._bytes is not None:
            return self._utf8.decode(b"", final=True)
        return self._window(final=True)

    def _window(self, final: bool) -> str:
        done = self._tok.decode(self._ids[self._prefix:self._read], self._skip)
        text = self._tok.decode(self._ids[self._prefix:], self._skip)
        if not final and (text.endswith("\ufffd") or len(text) <= len(done)):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done):]
