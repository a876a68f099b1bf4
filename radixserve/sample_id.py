"""A sample's identity: the request it belongs to and which of that request's n samples it is.

A request submitted with `n` samples runs as n scheduler requests that share one request id and
differ by index. Code inside radixserve passes the pair; callers see one string per sample
(`RequestOutput.request_id`, `StreamDelta.request_id`, the native API's `meta_info.id`), made by
`SampleId.name` and never parsed back.
"""
from __future__ import annotations

from typing import NamedTuple


class SampleId(NamedTuple):
    rid: str  # the request's id (the caller's, or a generated one), shared by its n samples
    index: int  # which of the request's samples, 0 .. n-1

    def name(self, n: int) -> str:
        """The id a caller sees for this sample of a request with `n` samples: the request's id
        itself when n == 1, "<rid>#<index>" otherwise."""
        # NOTE: the only place this string is made; nothing in radixserve parses it.
        return self.rid if n == 1 else f"{self.rid}#{self.index}"
