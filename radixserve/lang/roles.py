"""Role markers (the text around a system / user / assistant message) taken from the model's own
chat template, by rendering conversations whose contents are sentinels and cutting around them.

For a template T and a conversation [S, U1, A1, U2] (add_generation_prompt off):

    T = begin[system] S end[system] begin[user] U1 end[user] begin[assistant] A1 end[assistant]
        begin[user] U2 end[user]

`end[user]` is what follows the last message U2, `end[assistant]` what follows A1 when it is the
last message; the begins follow by removing the known ends from the text between two messages.
`conversation_start` is what a conversation that does not open with a system message starts with
(a template's default system message, e.g. SmolLM2's "You are a helpful AI assistant named SmolLM").
A template that cannot render a system message (it raises) yields markers without "system".
"""
from __future__ import annotations

from typing import Any, NamedTuple

_SENTINEL = {"system": "RSXSYSTEMXSENTINEL", "user": "RSXUSERXSENTINEL", "assistant": "RSXASSISTANTXSENTINEL"}


class RoleMarkers(NamedTuple):
    begin: dict[str, str]
    end: dict[str, str]
    conversation_start: str  # text before the first role when it is not "system" ("" if none)


def _render(tokenizer: Any, roles: list[str], suffix: str = "") -> str:
    msgs = [{"role": r, "content": _SENTINEL[r] + (str(i) if r != "system" else "") + suffix}
            for i, r in enumerate(roles)]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    if not isinstance(text, str):
        raise ValueError("the chat template did not render to a string")
    return text


def _split(text: str, contents: list[str]) -> list[str]:
    """text = parts[0] c0 parts[1] c1 ... parts[n]; ValueError if a content is missing."""
    parts, pos = [], 0
    for c in contents:
        at = text.find(c, pos)
        if at < 0:
            raise ValueError(f"the rendered template lost a message's content ({c!r})")
        parts.append(text[pos:at])
        pos = at + len(c)
    parts.append(text[pos:])
    return parts


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"cannot separate {what}: {text!r} does not start with {prefix!r}")
    return text[len(prefix):]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise ValueError(f"cannot separate {what}: {text!r} does not end with {suffix!r}")
    return text[:len(text) - len(suffix)]


def derive_role_markers(tokenizer: Any) -> RoleMarkers:
    """Role markers of `tokenizer`'s chat template; ValueError if it has none or it cannot be cut."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template, so roles (system/user/assistant) "
                         "are unavailable; write the prompt format as plain text instead")
    try:
        return _derive(tokenizer)
    except ValueError as exc:
        raise ValueError(f"could not derive role markers from the chat template: {exc}") from exc


def _derive(tokenizer: Any) -> RoleMarkers:
    try:
        with_system = True
        convo = ["system", "user", "assistant", "user"]
        r1 = _render(tokenizer, convo)
    except Exception:  # noqa: BLE001 - templates raise anything (jinja TemplateError, ...) on a system role
        with_system = False
        convo = ["user", "assistant", "user"]
        r1 = _render(tokenizer, convo)
    contents = [_SENTINEL[r] + (str(i) if r != "system" else "") for i, r in enumerate(convo)]
    p1 = _split(r1, contents)
    r2_convo = convo[:-1]
    p2 = _split(_render(tokenizer, r2_convo), contents[:-1])
    end = {"user": p1[-1], "assistant": p2[-1]}
    k = 1 if with_system else 0  # index of the first user message
    begin = {"assistant": _strip_prefix(p1[k + 1], end["user"], "end[user] from begin[assistant]"),
             "user": _strip_prefix(p1[k + 2], end["assistant"], "end[assistant] from begin[user]")}
    bos = _added_bos(tokenizer)
    if with_system:
        end["system"] = _strip_suffix(p1[1], begin["user"], "end[system] from begin[user]")
        begin["system"] = _drop_bos(p1[0], bos)
        alone = _split(_render(tokenizer, ["user"]), [_SENTINEL["user"] + "0"])
    else:
        alone = [p1[0]]
    start = _strip_suffix(_drop_bos(alone[0], bos), begin["user"], "the conversation start from begin[user]")
    return RoleMarkers(begin, end, start)


def _added_bos(tokenizer: Any) -> str | None:
    """The BOS text when encoding adds a BOS token itself (then the template's own copy is dropped)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    bos = getattr(tokenizer, "bos_token", None)
    if bos_id is None or not bos:
        return None
    return bos if tokenizer.encode("", add_special_tokens=True)[:1] == [bos_id] else None


def _drop_bos(text: str, bos: str | None) -> str:
    return text[len(bos):] if bos and text.startswith(bos) else text
