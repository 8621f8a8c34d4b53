"""Stop strings over streamed text: the answer ends before the first stop string, and text that
might be the start of one is held back until it is known not to be.

    s = StopStrings(["</s>"])
    s.feed("Red<") -> "Red"      ("<" could start "</s>": held)
    s.feed("/s> more") -> ""     (stopped; nothing after the stop string is emitted)
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStrings:
    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._held = ""

    def feed(self, text: str) -> str:
        """Add streamed text; return what is certainly part of the answer."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return buf[:cut]
        keep = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        """End of the stream: held text was not a stop string after all."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out
