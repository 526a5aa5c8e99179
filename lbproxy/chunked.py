"""Body readers for the h11 engine: a length, until the connection closes, or chunked with
llhttp's grammar, so both engines accept and refuse the same bodies (strict.py says why).

Nothing here does I/O: bytes in, body data out through a callback, or an ``HTTPError``.
"""

from __future__ import annotations

from collections.abc import Callable

from lbproxy.errors import HTTPError
from lbproxy.strict import TOKEN, table, trailer_size

BodySink = Callable[[bytes], None]


class LengthReader:
    """A body of ``length`` bytes (``length`` None: until the connection closes)."""

    __slots__ = ("_on_body", "_remaining", "done", "until_close")

    def __init__(self, length: int | None, on_body: BodySink) -> None:
        self._remaining = length
        self._on_body = on_body
        self.done = length == 0
        self.until_close = length is None

    def feed(self, buf: bytes, pos: int) -> int:
        end = len(buf)
        if self._remaining is not None:
            end = min(end, pos + self._remaining)
            self._remaining -= end - pos
            self.done = not self._remaining
        if end > pos:
            self._on_body(buf[pos:end])
        return end


_QDTEXT = table((0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xFF), chars=b"\t")
_QUOTED_PAIR = table((0x20, 0x7E), (0x80, 0xFF), chars=b"\t")
_FIELD_VALUE = table((0x20, 0x7E), (0x80, 0xFF), chars=b"\t")
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_MAX_CHUNK = 2**64 - 1  # llhttp's chunk size is a uint64

# The chunked reader's states, after llhttp's node names.
(
    _SIZE_FIRST,
    _SIZE,
    _EXT_START,
    _EXT_NAME,
    _EXT_VALUE,
    _EXT_QUOTED,
    _EXT_PAIR,
    _EXT_DONE,
    _SIZE_LF,
    _DATA,
    _DATA_END,
    _FIELD_START,
    _FIELD_NAME,
    _VALUE_START,
    _VALUE,
    _VALUE_LF,
    _END_LF,
) = range(17)


class ChunkedReader:
    """A chunked body (RFC 9112 7.1) read as llhttp reads it: a hex size up to 2**64 - 1, then
    extensions (token names, token or quoted values, no whitespace anywhere), CRLF after the
    size line and after each chunk's data, then trailer fields held to the head's rules (and
    to the head's size limit), which are dropped: lbproxy forwards no trailers. A trailer
    ``Connection: close`` sets ``close``, as it ends the connection in llhttp. Byte by byte,
    so an error is raised as soon as llhttp would raise it; the h11 engine's pace is not the
    production engine's."""

    __slots__ = (
        "_error",
        "_field",
        "_limit",
        "_on_body",
        "_remaining",
        "_request",
        "_state",
        "_too_large",
        "_trailer_size",
        "_value",
        "close",
        "done",
    )

    def __init__(
        self,
        on_body: BodySink,
        limit: int,
        error: type[HTTPError],
        too_large: type[HTTPError],
        request: bool,
    ) -> None:
        self._on_body = on_body
        self._request = request
        self._limit = limit
        self._error = error
        self._too_large = too_large
        self._state = _SIZE_FIRST
        self._remaining = 0
        self._field = bytearray()
        self._value = bytearray()
        self._trailer_size = 0
        self.close = False
        self.done = False

    def feed(self, buf: bytes, pos: int) -> int:
        """Read from ``buf[pos:]``; return where reading stopped: the end of ``buf``, or the
        end of the body (``done``)."""
        end = len(buf)
        while pos < end and not self.done:
            state = self._state
            if state == _DATA:
                stop = min(end, pos + self._remaining)
                self._remaining -= stop - pos
                self._on_body(buf[pos:stop])
                pos = stop
                if not self._remaining:
                    self._state = _DATA_END
            elif state == _DATA_END:
                # llhttp matches CRLF as one sequence: a CR alone waits for what follows.
                if buf[pos] != 13:
                    raise self._error("expected CRLF after chunk data")
                if pos + 1 == end:
                    return pos
                if buf[pos + 1] != 10:
                    raise self._error("expected LF after chunk data")
                pos += 2
                self._state = _SIZE_FIRST
            elif state >= _FIELD_START:
                self._trailer_byte(buf[pos])
                pos += 1
            else:
                self._size_byte(buf[pos])
                pos += 1
        return pos

    def _size_byte(self, c: int) -> None:
        state = self._state
        error = self._error
        if state in (_SIZE_FIRST, _SIZE):
            digit = _HEX.get(c)
            if digit is not None:
                self._remaining = self._remaining * 16 + digit
                if self._remaining > _MAX_CHUNK:
                    raise error("chunk size overflow")
                self._state = _SIZE
            elif state == _SIZE_FIRST:
                raise error("invalid character in chunk size")
            else:
                self._after_size(c)
        elif state == _EXT_START:
            if c in (0x20, 0x0D):
                raise error("invalid character in chunk extensions")
            self._state = _EXT_NAME
            self._size_byte(c)
        elif state == _EXT_NAME:
            if not TOKEN[c]:
                if c == 0x3D:  # "="
                    self._state = _EXT_VALUE
                else:
                    self._after_extension(c, "name")
        elif state == _EXT_VALUE:
            if c == 0x22:  # '"'
                self._state = _EXT_QUOTED
            elif not TOKEN[c]:
                self._after_extension(c, "value")
        elif state == _EXT_QUOTED:
            if c == 0x22:
                self._state = _EXT_DONE
            elif c == 0x5C:  # backslash
                self._state = _EXT_PAIR
            elif not _QDTEXT[c]:
                raise error("invalid character in chunk extensions quoted value")
        elif state == _EXT_PAIR:
            if not _QUOTED_PAIR[c]:
                raise error("invalid quoted-pair in chunk extensions quoted value")
            self._state = _EXT_QUOTED
        elif state == _EXT_DONE:
            self._after_extension(c, "quoted value")
        else:  # _SIZE_LF
            if c != 0x0A:
                raise error("expected LF after chunk size")
            self._state = _DATA if self._remaining else _FIELD_START

    def _after_size(self, c: int) -> None:
        if c == 0x0D:
            self._state = _SIZE_LF
        elif c == 0x3B:  # ";"
            self._state = _EXT_START
        else:
            raise self._error("invalid character in chunk size")

    def _after_extension(self, c: int, part: str) -> None:
        if c == 0x3B:
            self._state = _EXT_START
        elif c == 0x0D:
            self._state = _SIZE_LF
        else:
            raise self._error(f"invalid character in chunk extensions {part}")

    def _trailer_byte(self, c: int) -> None:
        state = self._state
        error = self._error
        if state == _FIELD_START:
            if self._field:
                # llhttp ends a field line once the next one begins (it could be folded).
                if c in (0x20, 0x09):
                    raise error("obsolete line folding in trailer fields")
                self._end_field()
            if c == 0x0D:
                self._state = _END_LF
            elif TOKEN[c]:
                self._field.append(c)
                self._state = _FIELD_NAME
            else:
                raise error("invalid character starting a trailer field")
        elif state == _FIELD_NAME:
            if TOKEN[c]:
                self._field.append(c)
            elif c == 0x3A:  # ":"
                # llhttp reads framing fields in trailers as in a head, and refuses them.
                if self._field.lower() == b"content-length":
                    raise error("Content-Length in trailer fields")
                self._state = _VALUE_START
            else:
                raise error("invalid character in a trailer field name")
        elif state == _VALUE_START and c in (0x20, 0x09):
            pass  # leading whitespace is not part of the value
        elif state in (_VALUE_START, _VALUE):
            if c == 0x0D:
                self._state = _VALUE_LF
            elif _FIELD_VALUE[c]:
                if self._request and self._field.lower() == b"transfer-encoding":
                    raise error("Transfer-Encoding in trailer fields")
                self._value.append(c)
                self._state = _VALUE
            else:
                raise error("invalid character in a trailer field value")
        elif state == _VALUE_LF:
            if c != 0x0A:
                raise error("expected LF after a trailer field")
            self._state = _FIELD_START
        else:  # _END_LF
            if c != 0x0A:
                raise error("expected LF after the trailer section")
            self.done = True

    def _end_field(self) -> None:
        name = bytes(self._field).lower()
        value = bytes(self._value)
        self._field.clear()
        self._value.clear()
        self._trailer_size += trailer_size(name, value)
        if self._trailer_size > self._limit:
            raise self._too_large(f"trailer fields larger than {self._limit} bytes")
        if name == b"transfer-encoding" and not value:
            raise self._error("empty Transfer-Encoding in trailer fields")
        if name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            self.close = self.close or b"close" in tokens
