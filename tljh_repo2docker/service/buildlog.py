"""A build's log: bounded (first and last lines), live to many readers.

Line numbers are absolute (0-based) so that a reader that reconnects with
``Last-Event-ID`` resumes where it was; lines dropped from the middle of a
very long log are replaced by one "omitted" entry.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Callable

DEFAULT_MAX_LINE_BYTES = 4096
DEFAULT_MAX_BYTES = 2 * 1024 * 1024


def cut_line(message: str, max_bytes: int) -> str:
    """``message`` cut to at most ``max_bytes`` UTF-8 bytes (plus a marker that
    says how much was cut), keeping its line break."""
    data = message.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return message
    newline = "\n" if message.endswith("\n") else ""
    kept = data[:max_bytes].decode("utf-8", errors="ignore")
    return f"{kept}... [{len(data) - len(kept.encode())} bytes cut]{newline}"


def _size(entry: dict) -> int:
    return len(entry["message"].encode("utf-8", errors="replace")) + len(entry["phase"])


class BuildLog:
    """Lines are capped twice: each line at ``max_line_bytes``, and the whole
    log at ``max_bytes`` (a third for the head, the rest for the tail). A
    line count alone let one build store 21 MB."""

    def __init__(
        self,
        head_size: int = 1000,
        tail_size: int = 2000,
        redact: Callable[[str], str] | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.head: list[dict] = []
        self.tail: deque[dict] = deque(maxlen=tail_size)
        self.head_size = head_size
        self.max_line_bytes = max_line_bytes
        self.head_bytes_max = max_bytes // 3
        self.tail_bytes_max = max_bytes - self.head_bytes_max
        self.head_bytes = 0
        self.tail_bytes = 0
        self.count = 0
        self.finished = False
        self._redact = redact or (lambda s: s)
        self._changed = asyncio.Event()

    @classmethod
    def from_stored(cls, head: str, tail: str, count: int) -> BuildLog:
        log = cls(head_size=0, tail_size=None)
        log.head = _loads(head)
        log.tail = deque(_loads(tail))
        log.count = max(count, len(log.head) + len(log.tail))
        log.finished = True
        return log

    def resume(self, head: str, tail: str, count: int) -> BuildLog:
        """Take up a stored log (a build a restarted service runs again):
        its lines keep their numbers, new ones follow, the same bounds hold."""
        self.head = _loads(head)
        self.head_bytes = sum(_size(e) for e in self.head)
        stored_tail = _loads(tail)
        if stored_tail or count > len(self.head):
            self.head_size = len(self.head)  # closed: numbers stay in order
        for entry in stored_tail:
            if self.tail.maxlen is not None and len(self.tail) == self.tail.maxlen:
                self.tail_bytes -= _size(self.tail.popleft())
            self.tail.append(entry)
            self.tail_bytes += _size(entry)
        self.count = max(count, len(self.head) + len(stored_tail))
        return self

    def append(self, phase: str, message: str):
        # redact first: cutting could split a secret and leave half of it
        message = self._redact(message)
        # a builder may hand over many lines in one message: each is a line here
        for line in message.splitlines(keepends=True) or [message]:
            self._append_line(phase, cut_line(line, self.max_line_bytes))
        self._wake()

    def _append_line(self, phase: str, line: str):
        entry = {"phase": phase, "message": line}
        size = _size(entry)
        if len(self.head) < self.head_size and self.head_bytes + size <= self.head_bytes_max:
            self.head.append(entry)
            self.head_bytes += size
        else:
            # once the head is full it stays closed: line numbers stay in order
            self.head_size = len(self.head)
            if self.tail.maxlen is not None and len(self.tail) == self.tail.maxlen:
                self.tail_bytes -= _size(self.tail[0])
            self.tail.append(entry)
            self.tail_bytes += size
            while self.tail_bytes > self.tail_bytes_max and len(self.tail) > 1:
                self.tail_bytes -= _size(self.tail.popleft())
        self.count += 1

    def finish(self):
        self.finished = True
        self._wake()

    def _wake(self):
        self._changed.set()
        self._changed = asyncio.Event()

    def entries_from(self, start: int) -> list[tuple[int, dict]]:
        """(line number, entry) for every kept line numbered >= ``start``.

        Costs what it returns, not the log's length: readers that follow a
        live log call this for every new line.
        """
        start = max(0, start)
        out = list(enumerate(self.head[start:], start)) if start < len(self.head) else []
        tail_start = self.count - len(self.tail)
        gap = tail_start - len(self.head)
        if gap > 0 and start < tail_start:
            omitted = {"phase": "log", "message": f"... {gap} lines omitted ...\n"}
            out.append((tail_start - 1, omitted))
        skip = max(0, start - tail_start)
        if skip < len(self.tail):
            tail = self.tail if skip == 0 else itertools.islice(self.tail, skip, None)
            out.extend(enumerate(tail, tail_start + skip))
        return out

    async def wait(self, timeout: float):
        """Until a line is added or the build finishes (or ``timeout``)."""
        if self.finished:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def follow(self, start: int = 0, keepalive: float = 15):
        """Yield (number, entry) from line ``start`` until the log finishes;
        ``None`` after ``keepalive`` seconds without a line."""
        next_line = start
        while True:
            for number, entry in self.entries_from(next_line):
                yield number, entry
                next_line = number + 1
            if self.finished:
                return
            before = self.count
            await self.wait(keepalive)
            if self.count == before and not self.finished:
                yield None

    def text(self) -> str:
        return "".join(e["message"] for _, e in self.entries_from(0))

    def stored(self) -> tuple[str, str, int]:
        return _dumps(self.head), _dumps(self.tail), self.count


def _dumps(entries) -> str:
    return "\n".join(json.dumps(e, separators=(",", ":")) for e in entries)


def _loads(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
