"""Chat templates as data, and LLaVA's prompt encoding.

A template is what LLaVA / MoE-LLaVA's `Conversation` holds (moellava/conversation.py): a system
prompt, two role names, a separator style and separators. It is stored in the .mote metadata, so
the runtime renders prompts exactly as the checkpoint was trained:

    v1     (conv_vicuna_v1)  "<system> USER: <image>\\nWhat color is the star? ASSISTANT:"   stop "</s>"
    qwen   (MoE-LLaVA's "qwen" = conv_phi: the same text, turns end with "<|endoftext|>") stop "<|endoftext|>"
    plain  (conv_llava_plain, LLaVA's pre-training format)  "<image>What color is the star?"  stop "\\n"

`encode_text` follows LLaVA's tokenizer_image_token: the text is split on "<image>", each chunk
is encoded on its own, IMAGE_TOKEN_INDEX (-200) marks where the projected image patch embeddings
go (never looked up in the embedding table), and the tokenizer's BOS (if it adds one) leads once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from mote_edge.config import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from mote_edge.errors import ConfigError, TokenizerError
from mote_edge.tokenizer import Tokenizer

DEFAULT_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
STYLES = ("two", "plain")  # LLaVA SeparatorStyle.TWO and .PLAIN


@dataclass(frozen=True)
class Turn:
    """One rendered message: role "user" or "assistant", its text, and how many images lead it (user only)."""

    role: str
    text: str
    images: int = 0

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ConfigError(f"a turn's role must be user or assistant, got {self.role!r}")
        if self.images and self.role != "user":
            raise ConfigError("only user turns can hold images")


@dataclass(frozen=True)
class ChatTemplate:
    """One conversation format. style "two": system + sep, then "ROLE: text" + sep (user) / sep2
    (assistant) per turn, and "ASSISTANT:" to ask for the answer; style "plain": the turns' text
    with sep after each, no system and no role names. The image placeholder leads the first user turn
    ("<image>\\n" in "two", "<image>" in "plain"). Generation stops at any of `stop`."""

    name: str
    system: str = DEFAULT_SYSTEM
    user: str = "USER"
    assistant: str = "ASSISTANT"
    style: str = "two"
    sep: str = " "
    sep2: str = "</s>"
    stop: tuple[str, ...] = field(default=("</s>",))

    def __post_init__(self) -> None:
        for name in ("name", "system", "user", "assistant", "style", "sep", "sep2"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"chat template {name} must be a string, got {getattr(self, name)!r}")
        if self.style not in STYLES:
            raise ConfigError(f"chat template style {self.style!r} is not supported (expected one of {', '.join(STYLES)})")
        if not isinstance(self.stop, (tuple, list)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"chat template stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if IMAGE_PLACEHOLDER in self.system + self.user + self.assistant + self.sep + self.sep2:
            raise ConfigError(f"chat template {self.name!r} contains the image placeholder {IMAGE_PLACEHOLDER!r}")

    def with_system(self, system: str | None) -> "ChatTemplate":
        return self if system is None else ChatTemplate(**{**self.to_dict(), "system": system})

    def format_prompt(self, question: str, has_image: bool) -> str:
        """One user turn, then the cue for the assistant's answer."""
        return self.format_conversation([Turn("user", question, int(has_image))])

    def format_conversation(self, turns: Sequence[Turn]) -> str:
        """A whole conversation, then the cue for the next answer (LLaVA's Conversation.get_prompt with a
        last (assistant, None) message). The turns alternate as the caller gives them and end with a user
        turn; a user turn's images lead its text, one placeholder each. style "two": system + sep, then
        "ROLE: text" + sep after a user turn and sep2 after an assistant turn, and "ASSISTANT:"; style
        "plain": each turn's text followed by sep / sep2, the last user turn without one."""
        if not turns or turns[-1].role != "user":
            raise ConfigError("a conversation to answer must end with a user turn")
        if self.style == "plain":
            parts = [IMAGE_PLACEHOLDER * t.images + t.text + ("" if i == len(turns) - 1 else self._sep_after(t))
                     for i, t in enumerate(turns)]
            return "".join(parts)
        out = [self.system, self.sep]
        for t in turns:
            role = self.user if t.role == "user" else self.assistant
            out.append(f"{role}: {f'{IMAGE_PLACEHOLDER}{chr(10)}' * t.images}{t.text}{self._sep_after(t)}")
        out.append(f"{self.assistant}:")
        return "".join(out)

    def _sep_after(self, turn: Turn) -> str:
        return self.sep if turn.role == "user" else self.sep2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ChatTemplate":
        """From .mote metadata; a block that names only a known template (and maybe its system) is that template."""
        if not isinstance(d, dict):
            raise ConfigError(f"chat template must be an object, got {type(d).__name__}")
        name = d.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"chat template name must be a string, got {name!r:.40}")
        if set(d) <= {"name", "system"}:
            base = template_named(name)
            return base.with_system(d.get("system"))
        known = {k: d[k] for k in ("name", "system", "user", "assistant", "style", "sep", "sep2", "stop") if k in d}
        return cls(**known)


TEMPLATES: dict[str, ChatTemplate] = {
    "v1": ChatTemplate("v1", sep2="</s>", stop=("</s>",)),
    "qwen": ChatTemplate("qwen", sep2="<|endoftext|>", stop=("<|endoftext|>",)),
    "plain": ChatTemplate("plain", system="", user="", assistant="", style="plain", sep="\n", sep2="\n", stop=("\n",)),
}
ALIASES = {"moe-llava-v1": "v1", "vicuna_v1": "v1", "llava_v1": "v1", "phi": "qwen"}
DEFAULT_TEMPLATE = TEMPLATES["v1"]
# The v1 turn markers, for code that builds training text around the template.
USER = f"{DEFAULT_TEMPLATE.sep}{DEFAULT_TEMPLATE.user}: "
ASSISTANT = f"{DEFAULT_TEMPLATE.sep}{DEFAULT_TEMPLATE.assistant}:"


def template_named(name: Any) -> ChatTemplate:
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in TEMPLATES:
        raise ConfigError(f"unknown chat template {name!r} (choose from {', '.join(TEMPLATES)})")
    return TEMPLATES[key]


def template_for_tokenizer(tokenizer: Tokenizer) -> ChatTemplate:
    """The export default: MoE-LLaVA's "qwen" when the tokenizer's EOS is <|endoftext|>, else "v1"."""
    eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    return TEMPLATES["qwen"] if eos == "<|endoftext|>" else TEMPLATES["v1"]


def format_prompt(question: str, has_image: bool, system: str = DEFAULT_SYSTEM,
                  template: ChatTemplate = DEFAULT_TEMPLATE) -> str:
    """The prompt text of one question in `template` with `system`."""
    return template.with_system(system).format_prompt(question, has_image)


def encode_text(tokenizer: Tokenizer, text: str, has_image: bool) -> list[int]:
    """LLaVA's tokenizer_image_token: [BOS once if the tokenizer adds one] + chunk ids with
    IMAGE_TOKEN_INDEX between. Exactly one placeholder when has_image, none otherwise."""
    return encode_with_images(tokenizer, text, 1 if has_image else 0)


def encode_with_images(tokenizer: Tokenizer, text: str, images: int) -> list[int]:
    """tokenizer_image_token for any number of images: one IMAGE_TOKEN_INDEX per placeholder, in order."""
    n = text.count(IMAGE_PLACEHOLDER)
    if n != images:
        raise TokenizerError(f"the prompt contains {n} {IMAGE_PLACEHOLDER!r} placeholders for {images} "
                             f"image{'' if images == 1 else 's'}")
    ids: list[int] = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        # Tokenizer.encode adds no special tokens and reads special-token text as plain text,
        # so a question starting with the BOS text cannot produce a second BOS id.
        ids.extend(tokenizer.encode(chunk))
    return ids


def encode_prompt(tokenizer: Tokenizer, question: str, has_image: bool, system: str | None = None,
                  template: ChatTemplate = DEFAULT_TEMPLATE) -> list[int]:
    """Prompt ids of one question rendered by `template` (its own system prompt unless `system`).

    Returns a list of length T with exactly one IMAGE_TOKEN_INDEX when has_image, none otherwise.
    """
    return encode_text(tokenizer, template.with_system(system).format_prompt(question, has_image), has_image)
