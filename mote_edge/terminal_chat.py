"""`mote-edge chat`: a multi-turn conversation in the terminal, answers streamed as they are decoded.

Each turn sends the whole conversation to Engine.chat, which reuses the KV cache for what the previous
turn already computed, so a follow-up prefills only its own tokens. Commands:

    /image PATH   attach an image to the next question
    /reset        forget the conversation (and attached images)
    /report       the memory and speed report of the last answer
    /quit         leave (so does end of input)

Ctrl-C while an answer streams stops that answer (what was shown stays in the conversation); the program goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mote_edge.errors import MoteError
from mote_edge.image import load_image

HELP = "commands: /image PATH, /reset, /report, /quit (Ctrl-C stops an answer)"


@dataclass
class TerminalChat:
    engine: object
    out: TextIO
    system: str | None = None
    max_new_tokens: int = 128
    messages: list[dict] = field(default_factory=list)
    pending_images: list[Path] = field(default_factory=list)
    answered: bool = False

    def attach(self, path: str) -> None:
        p = Path(path.strip()).expanduser()
        load_image(p)  # a bad file is reported now, not at the next question
        self.pending_images.append(p)
        self.say(f"[image {p.name} attached to the next question]")

    def reset(self) -> None:
        self.messages, self.pending_images = [], []
        self.say("[conversation cleared]")

    def report(self) -> None:
        from mote_edge.runtime.report import report_text

        self.say(report_text(self.engine.report()) if self.answered else "[no answer yet]")

    def ask(self, question: str) -> None:
        content: str | list = question
        if self.pending_images:
            content = [*({"type": "image", "image": str(p)} for p in self.pending_images),
                       {"type": "text", "text": question}]
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        turn = {"role": "user", "content": content}
        conversation = system + self.messages + [turn]
        engine = self.engine
        left = engine.plan.context - engine.prompt_positions(conversation)
        if left < 1:
            raise MoteError(f"the conversation fills the context of {engine.plan.context} positions; /reset to start over")
        pieces: list[str] = []
        stream = engine.chat(conversation, max_new_tokens=min(self.max_new_tokens, left))
        try:
            for piece in stream:
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()  # the decoder stops here: no further token is computed
            self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()
        self.answered = True
        self.messages += [turn, {"role": "assistant", "content": "".join(pieces)}]
        self.pending_images = []

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, read_line: Callable[[], str]) -> None:
        """Read lines until /quit or end of input; every error is one line and the chat goes on."""
        for line in _lines(read_line, self.out):
            command, _, argument = line.partition(" ")
            try:
                if command in ("/quit", "/exit"):
                    return
                if command == "/image":
                    self.attach(argument) if argument.strip() else self.say("usage: /image PATH")
                elif command == "/reset":
                    self.reset()
                elif command == "/report":
                    self.report()
                elif command == "/help":
                    self.say(HELP)
                elif command.startswith("/"):
                    self.say(f"unknown command {command}; {HELP}")
                else:
                    self.ask(line)
            except MoteError as e:
                self.say(f"error: {e}")


def _lines(read_line: Callable[[], str], out: TextIO) -> Iterator[str]:
    while True:
        try:
            line = read_line()
        except EOFError:
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, not an exit
            out.write("\n")
            continue
        if line.strip():
            yield line.strip()
