"""Reading SSE events from an upstream stream."""

from __future__ import annotations

import pytest

from satsrouter.endpoints.base import event_data


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        (b'data: {"a":1}\n\n', b'{"a":1}'),
        (b'data:{"a":1}\n\n', b'{"a":1}'),
        (b"data:   [DONE]\n\n", b"[DONE]"),
        (b"data: \n\n", b""),
        (b": PROCESSING\n\n", b""),
        (b'event: message_start\ndata: {"a":1}\n\n', b'{"a":1}'),
        (b"data: one\ndata: two\n\n", b"one\ntwo"),
        (b": keep-alive\ndata: x\n\n", b"x"),
        (b"id: 7\n\n", b""),
    ],
)
def test_event_data_reads_the_data_lines(event: bytes, payload: bytes) -> None:
    assert event_data(event) == payload
