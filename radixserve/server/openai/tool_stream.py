"""Reading tool calls out of generated text as it arrives, for streamed and whole answers alike.

`ToolReader(plan).feed(text)` returns Pieces: content text, or a tool call (all of it for auto
and required; for a named function the call's header first, then its arguments as they grow).
A whole answer is the same pieces joined (`assemble`), so streamed and non-streamed answers agree.
Content is the text outside tool-call blocks with leading and trailing whitespace removed:
whitespace is held back until more content follows it.
"""
from __future__ import annotations

from typing import NamedTuple

from radixserve.server.openai.tools import CLOSE, OPEN, Call, ToolPlan, call_from_json, new_call


class Piece(NamedTuple):
    content: str | None = None
    index: int | None = None  # tool call index within the choice
    id: str | None = None  # first piece of a call only
    name: str | None = None  # first piece of a call only
    arguments: str | None = None

    def delta(self) -> dict:
        """The `delta` of a chat.completion.chunk for this piece."""
        if self.index is None:
            return {"content": self.content}
        call: dict = {"index": self.index}
        if self.id is not None:
            call.update(id=self.id, type="function")
        fn = {"arguments": self.arguments or ""}
        if self.name is not None:
            fn["name"] = self.name
        call["function"] = fn
        return {"tool_calls": [call]}


def _held(buf: str, marker: str) -> int:
    """Length of the longest suffix of buf that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:n]):
            return n
    return 0


class ToolReader:
    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.calls = 0
        self._buf = ""
        self._inside = False  # within a <tool_call> block (auto)
        self._started = False  # some content was emitted
        self._ws = ""  # whitespace held back
        self._depth = 0  # JSON scanner (required)
        self._in_str = False
        self._escape = False
        self._start: int | None = None
        self._scanned = 0

    def feed(self, text: str) -> list[Piece]:
        if self.plan.mode == "named":
            return self._named(text)
        if self.plan.mode == "required":
            return self._required(text)
        return self._auto(text)

    def finish(self) -> list[Piece]:
        """The answer ended: what is still held back."""
        out: list[Piece] = []
        if self.plan.mode == "auto":
            self._content((OPEN if self._inside else "") + self._buf, out)
        elif self.plan.mode == "required" and self.calls == 0:
            self._content(self._buf, out)  # cut short before one whole call: the raw text
        self._buf = ""
        return out

    # ---- modes --------------------------------------------------------------------------------
    def _named(self, text: str) -> list[Piece]:
        out = []
        if self.calls == 0:
            call = new_call(self.plan.named or "", "")
            out.append(Piece(index=0, id=call.id, name=call.name, arguments=""))
            self.calls = 1
        if text:
            out.append(Piece(index=0, arguments=text))
        return out

    def _auto(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        self._buf += text
        while True:
            if not self._inside:
                i = self._buf.find(OPEN)
                if i < 0:
                    keep = _held(self._buf, OPEN)
                    self._content(self._buf[:len(self._buf) - keep], out)
                    self._buf = self._buf[len(self._buf) - keep:]
                    return out
                self._content(self._buf[:i], out)
                self._buf, self._inside = self._buf[i + len(OPEN):], True
            else:
                j = self._buf.find(CLOSE)
                if j < 0:
                    return out
                body, self._buf, self._inside = self._buf[:j], self._buf[j + len(CLOSE):], False
                call = call_from_json(body.strip(), self.plan.names)
                if call is None:
                    self._content(OPEN + body + CLOSE, out)  # not a call to one of the tools: plain text
                elif self.plan.parallel or self.calls == 0:  # NOTE: parallel_tool_calls false keeps the first
                    out.append(self._call_piece(call))

    def _required(self, text: str) -> list[Piece]:
        """The output is a JSON array of call objects: emit each object when it closes."""
        out: list[Piece] = []
        self._buf += text
        for i in range(self._scanned, len(self._buf)):
            ch = self._buf[i]
            if self._in_str:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_str = False
            elif ch == '"':
                self._in_str = True
            elif ch in "[{":
                if ch == "{" and self._depth == 1:
                    self._start = i
                self._depth += 1
            elif ch in "]}":
                self._depth -= 1
                if ch == "}" and self._depth == 1 and self._start is not None:
                    call = call_from_json(self._buf[self._start:i + 1], self.plan.names)
                    if call is not None:
                        out.append(self._call_piece(call))
                    self._start = None
        self._scanned = len(self._buf)
        return out

    # ---- helpers ------------------------------------------------------------------------------
    def _call_piece(self, call: Call) -> Piece:
        piece = Piece(index=self.calls, id=call.id, name=call.name, arguments=call.arguments)
        self.calls += 1
        return piece

    def _content(self, text: str, out: list[Piece]) -> None:
        text = self._ws + text
        if not self._started:
            text = text.lstrip()
        body = text.rstrip()
        self._ws = text[len(body):]
        if body:
            self._started = True
            out.append(Piece(content=body))


class Assembled(NamedTuple):
    content: str | None
    tool_calls: list[dict]


def assemble(pieces: list[Piece]) -> Assembled:
    content = "".join(p.content for p in pieces if p.content is not None)
    calls: dict[int, dict] = {}
    for p in pieces:
        if p.index is None:
            continue
        call = calls.setdefault(p.index, {"id": p.id, "type": "function", "function": {"name": p.name,
                                                                                       "arguments": ""}})
        call["function"]["arguments"] += p.arguments or ""
    return Assembled(content or None, [calls[i] for i in sorted(calls)])
