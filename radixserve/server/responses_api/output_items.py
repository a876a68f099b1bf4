"""The output items of a /v1/responses answer (messages and function calls), built from the
answer's pieces (tool_stream.Piece) together with the stream events that build them.

A streamed answer and a whole one feed the same pieces, so their items agree. Items come in the
order the model wrote them: text opens a message, a call closes whatever is open and opens a
`function_call` item; an item is closed (its `.done` events) when the next one opens or the answer
ends. Without tools the message opens before the first token (and an answer with no text is still
one empty message); with tools it opens at the first text, and an answer with neither text nor
calls is one empty message.
"""
from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from radixserve.server.openai.tool_stream import Piece

Event = tuple[str, dict]  # (event type, its fields without type and sequence_number)


class CallMessage(NamedTuple):
    """The answer as a chat message, for the stored conversation."""

    content: str | None
    tool_calls: list[dict]


def _part(text: str, logprobs: list) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


class OutputItems:
    def __init__(self, eager_message: bool) -> None:
        self.items: list[dict] = []  # every item opened so far, in output order
        self._open: dict | None = None
        self._text: list[str] = []  # of the open message
        self._logprobs: list[dict] = []  # of the open message
        if eager_message:
            self._pending = self._open_message()
        else:
            self._pending = []

    def start(self) -> list[Event]:
        """The events before the first piece (the eager message's opening)."""
        out, self._pending = self._pending, []
        return out

    def text(self, delta: str, logprobs: list[dict] | None = None, delta_logprobs: list[dict] | None = None
             ) -> list[Event]:
        """Text of the answer (with its tokens' logprobs: whole entries, and as a delta shows them)."""
        out: list[Event] = []
        if self._open is None or self._open["type"] != "message":
            out += self._close("completed") + self._open_message()
        self._text.append(delta)
        self._logprobs += logprobs or []
        out.append(("response.output_text.delta", {**self._at(), "content_index": 0, "delta": delta,
                                                   "logprobs": delta_logprobs or []}))
        return out

    def piece(self, p: Piece) -> list[Event]:
        if p.index is None:
            return self.text(p.content or "") if p.content else []
        out: list[Event] = []
        if p.id is not None:  # a new call
            out += self._close("completed")
            self._open = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "in_progress",
                          "call_id": p.id, "name": p.name, "arguments": ""}
            self.items.append(self._open)
            out.append(("response.output_item.added", {"output_index": len(self.items) - 1, "item": dict(self._open)}))
        if p.arguments:
            assert self._open is not None and self._open["type"] == "function_call"
            self._open["arguments"] += p.arguments
            out.append(("response.function_call_arguments.delta", {**self._at(), "delta": p.arguments}))
        return out

    def finish(self, status: str, call_status: str) -> list[Event]:
        """The answer ended: close what is open (a message with `status`, a call with `call_status`);
        an answer that wrote nothing is one empty message."""
        out: list[Event] = []
        if not self.items:
            out += self._open_message()
        open_kind = self._open["type"] if self._open is not None else None
        out += self._close(status if open_kind == "message" else call_status)
        return out

    def as_message(self) -> CallMessage:
        texts = [i["content"][0]["text"] for i in self.items if i["type"] == "message"]
        content = "".join(texts) if texts else None
        calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
                 for i in self.items if i["type"] == "function_call" and i["status"] == "completed"]
        cut = [i["arguments"] for i in self.items if i["type"] == "function_call" and i["status"] != "completed"]
        if cut:  # NOTE: a call cut short has no JSON arguments; the history keeps it as the text it was
            content = (content or "") + "".join(cut)
        if content is None and not calls:
            content = ""
        return CallMessage(content, calls)

    # ---- helpers ------------------------------------------------------------------------------
    def _at(self) -> dict:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.items) - 1}

    def _open_message(self) -> list[Event]:
        self._open = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "status": "in_progress",
                      "role": "assistant", "content": []}
        self.items.append(self._open)
        self._text, self._logprobs = [], []
        return [("response.output_item.added", {"output_index": len(self.items) - 1, "item": _copy(self._open)}),
                ("response.content_part.added", {**self._at(), "content_index": 0, "part": _part("", [])})]

    def _close(self, status: str) -> list[Event]:
        item = self._open
        if item is None:
            return []
        out: list[Event] = []
        at = self._at()
        item["status"] = status
        if item["type"] == "message":
            text = "".join(self._text)
            part = _part(text, self._logprobs)
            item["content"] = [part]
            out += [("response.output_text.done", {**at, "content_index": 0, "text": text, "logprobs": self._logprobs}),
                    ("response.content_part.done", {**at, "content_index": 0, "part": part})]
        else:
            out.append(("response.function_call_arguments.done", {**at, "arguments": item["arguments"]}))
        out.append(("response.output_item.done", {"output_index": at["output_index"], "item": _copy(item)}))
        self._open = None
        return out


def _copy(item: dict[str, Any]) -> dict:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in item.items()}
