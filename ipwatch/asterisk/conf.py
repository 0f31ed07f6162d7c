"""A lossless model of Asterisk `.conf` files: parse, locate, edit and serialise.

A `Document` keeps the text of a file exactly as read, so serialising an unedited document gives
back the same bytes, and an edit replaces one value span (or inserts one line): a diff of the file
shows only what ipwatch meant to change. The model follows the syntax of Asterisk's `main/config.c`
and knows nothing about the modules that read it (PJSIP, chan_sip).

How config.c reads a line (`config_text_file_load()` and `process_text_line()`):

- Lines end at `\\n` only (fgets). A lone `\\r` is an ordinary character; the `\\r` of `\\r\\n` is
  stripped with the other blanks. A NUL byte ends the line's text (C strings).
- A line that fills the 8192-byte fgets buffer (8191 bytes or more, newline included) is skipped,
  and when its length is a multiple of 8191 the skip loop swallows the following line too.
- `;` starts a comment unless a backslash precedes it. `;--` (but not `;---`) opens a block comment,
  `--;` closes one, and they nest. config.c decrements the depth even when no block is open, so a
  stray `--;` comments out the rest of the file until a later `;--`; the model does the same.
- The text left outside comments is joined and stripped of every byte below 33 (`ast_strip`). It is
  a section header `[name](options)`, a directive (`#include`, `#tryinclude`, `#exec`), or an option
  split at its first `=` into key and value; `=>` means `=`, and `+=` appends.

Large files: 10,000 PJSIP endpoints make 150,000 lines, and CPython cannot even create one object
per line within the 100 ms ipwatch allows for reading, editing and writing such a file. So `parse`
only decodes. The targeted queries (`find`, `find_sections`, `section_at`, `options_in`,
`directives`) find candidate lines with substring searches that run at C speed and read only
those lines; `options` and `sections` read everything and are the complete but slower views.
"""

from __future__ import annotations

import bisect
import glob
import heapq
import os
import pwd
import re
import stat
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Literal, NamedTuple, TypeAlias

from ipwatch.errors import ConfFileError
from ipwatch.reading import MIB, Unfit, read_regular_file, size_text

Operator = Literal["=", "=>", "+="]
DirectiveKind = Literal["include", "tryinclude", "exec"]

# ast_strip() skips every byte below 33, control characters included.
_BLANKS = "".join(map(chr, range(1, 33)))
_BOM = "\ufeff"
# config.c reads with fgets(buf, 8192): a line of 8191 bytes or more never fits.
_FGETS_LIMIT = 8191
# No character takes more than 4 bytes in UTF-8, so shorter lines need no byte count.
_SURELY_SHORT = _FGETS_LIMIT // 4
# ast_config_internal_load() refuses files nested deeper than max_include_level (10).
_MAX_INCLUDE_DEPTH = 10
# Line numbers are counted per block of this many characters, so finding one costs little.
_BLOCK = 1 << 12
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_DIRECTIVES: dict[str, DirectiveKind] = {
    "include": "include",
    "tryinclude": "tryinclude",
    "exec": "exec",
}
_GLOB_MAGIC = re.compile(r"[*?\[]")
_STYLE_SAMPLE = 50


@dataclass(frozen=True, slots=True)
class Section:
    """A section header such as `[name](!,base)`, with the entries in its parentheses.

    `template` is the `!` flag, `append` a `+` entry (add to the first earlier section of that
    name; `filter` is what followed the `+`), and `inherits` lists the other entries in order.
    """

    path: str
    line: int
    name: str
    template: bool = False
    append: bool = False
    filter: str = ""
    inherits: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Option:
    """One `key = value` line: where it is, what Asterisk reads from it, and its value's columns.

    `section` is the header above it in the same file (None before the first one). `value` is
    stripped as Asterisk strips it but keeps `\\;` as written. `span` holds the columns of the
    value inside the line; an empty value has an empty span where a value would be written.
    """

    path: str
    line: int
    section: Section | None
    key: str
    operator: Operator
    value: str
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Directive:
    """An `#include`, `#tryinclude` or `#exec` line, its argument unquoted as config.c does."""

    path: str
    line: int
    section: Section | None
    kind: DirectiveKind
    argument: str


class _Head(NamedTuple):
    name: str
    template: bool
    append: bool
    filter: str
    inherits: tuple[str, ...]


class _Style(NamedTuple):
    indent: str
    before: str
    after: str


class _Opt(NamedTuple):
    key: str
    operator: Operator
    value: str
    span: tuple[int, int]
    style: _Style | None


class _Dir(NamedTuple):
    kind: DirectiveKind
    argument: str


_Entry: TypeAlias = _Head | _Opt | _Dir
_Item: TypeAlias = Section | Option | Directive


def _fold(text: str) -> str:
    """Lower-case ASCII letters only, keeping every offset, as strcasecmp() compares names."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _live_parts(content: str, depth: int) -> tuple[list[tuple[int, int]], int]:
    """Return the column ranges of a line that lie outside comments, and the depth after it.

    This is config.c's comment loop: it looks at each `;` in turn, and a block comment closed
    mid-line lets the text after it join the text before the block (the memmove in config.c).
    """
    if ";" not in content:
        return ([(0, len(content))] if depth == 0 else []), depth
    parts: list[tuple[int, int]] = []
    start = 0 if depth == 0 else -1
    position = 0
    while (i := content.find(";", position)) >= 0:
        if i > 0 and content[i - 1] == "\\":
            position = i + 1
        elif content.startswith("--", i + 1) and not content.startswith("-", i + 3):
            if start >= 0:
                parts.append((start, i))
                start = -1
            depth += 1
            position = i + 3
        elif i >= position + 2 and content.startswith("--", i - 2):
            depth -= 1
            position = i + 1
            if depth == 0:
                start = position
        elif depth == 0:
            # A plain comment ends the scan: whatever follows, `;--` included, is comment.
            if start >= 0:
                parts.append((start, i))
            return parts, depth
        else:
            position = i + 1
    if start >= 0:
        parts.append((start, len(content)))
    return parts, depth


def _column(parts: list[tuple[int, int]], index: int, closing: bool) -> int:
    """Map an index into the joined live text back to a column of the physical line."""
    for first, last in parts:
        size = last - first
        if index < size or (closing and index == size):
            return first + index
        index -= size
    return parts[-1][1]


def _read(content: str, depth: int) -> tuple[_Entry | None, int]:
    """Read one line the way config.c does, given the block-comment depth before it."""
    parts, depth = _live_parts(content, depth)
    if not parts:
        return None, depth
    if len(parts) == 1:
        live = content[parts[0][0] : parts[0][1]]
    else:
        live = "".join(content[first:last] for first, last in parts)
    left = live.lstrip(_BLANKS)
    body = left.rstrip(_BLANKS)
    if not body:
        return None, depth
    if body[0] == "[":
        return _header(body), depth
    if body[0] == "#":
        return _directive(body), depth
    start = len(live) - len(left)
    return _option(live, start, start + len(body), parts), depth


def _header(body: str) -> _Head | None:
    """Read `[name](entries)`; config.c fails the whole file when `]` or `)` is missing."""
    close = body.find("]")
    if close < 0:
        return None
    entries: list[str] = []
    if body.startswith("(", close + 1):
        end = body.find(")", close + 2)
        if end < 0:
            return None
        entries = body[close + 2 : end].split(",")
    # config.c compares the entries unstripped: "(!, base)" inherits from " base".
    appends = [entry[1:] for entry in entries if entry.startswith("+")]
    inherits = tuple(entry for entry in entries if entry != "!" and not entry.startswith("+"))
    return _Head(body[1:close], "!" in entries, bool(appends), next(iter(appends), ""), inherits)


def _directive(body: str) -> _Dir | None:
    """Read `#word argument`; unknown words and missing arguments are only warnings in config.c."""
    # config.c ends the word at the first byte not above 32. It tests a plain char, which is
    # signed on x86, so there bytes from 128 up end it too; like ARM, this lets them continue it.
    end = 1
    while end < len(body) and ord(body[end]) > 32:
        end += 1
    kind = _DIRECTIVES.get(_fold(body[1:end]))
    argument = body[end + 1 :].strip(_BLANKS)
    if kind is None or not argument:
        return None
    closer = {'"': '"', "<": ">"}.get(argument[0])
    if closer is not None and argument.endswith(closer):
        argument = argument[1:-1]
    return _Dir(kind, argument)


def _option(live: str, start: int, end: int, parts: list[tuple[int, int]]) -> _Opt | None:
    """Split `key = value` at the first `=` as process_text_line() does."""
    escaped = live[start] == "\\"
    key_start = start + escaped
    # A backslash escapes the key's first character; config.c rejects escaping a blank.
    if escaped and (key_start >= end or ord(live[key_start]) < 33):
        return None
    equals = live.find("=", key_start + escaped, end)
    if equals < 0:
        return None
    operator: Operator = "="
    operator_start, value_start = equals, equals + 1
    if equals > key_start + escaped and live[equals - 1] == "+":
        operator, operator_start = "+=", equals - 1
    elif equals + 1 < end and live[equals + 1] == ">":
        operator, value_start = "=>", equals + 2
    key = live[key_start:operator_start].strip(_BLANKS)
    if not key:
        return None
    value = live[value_start:end].lstrip(_BLANKS)
    first = end - len(value)
    if not value:
        # Where a value would go: after the spaces and tabs that follow the operator.
        rest = live[value_start:]
        first = value_start + len(rest) - len(rest.lstrip(" \t"))
    if len(parts) == 1:
        offset = parts[0][0]
        span = (offset + first, offset + first + len(value))
    else:
        # An empty value sits at the end of the text before it, not at the start of what follows.
        span = (_column(parts, first, not value), _column(parts, first + len(value), True))
    style = None
    if len(parts) == 1 and parts[0][0] == 0:
        before = live[key_start + len(key) : operator_start]
        style = _Style(live[:start], before, live[operator_start + len(operator) : first])
    return _Opt(key, operator, value, span, style)


def _fgets_length(raw: str, bom: bool) -> int:
    """Return the bytes fgets() sees for a line (newline included), or 0 when surely short."""
    if len(raw) < _SURELY_SHORT:
        return 0
    return len(raw.encode("utf-8", "surrogateescape")) + (3 if bom else 0)


def _swallows_next(length: int, newline: bool) -> bool:
    """Whether skipping a line of `length` bytes makes config.c's skip loop eat the next one.

    The loop reads 8191-byte pieces until one comes back shorter; when the line's remaining bytes
    fill whole pieces, that shorter piece is the next line.
    """
    return length >= _FGETS_LIMIT and length % _FGETS_LIMIT == 0 and newline


def _check_value(value: str) -> None:
    """Refuse values that would change the structure of the file around them."""
    if any(ord(char) < 32 and char != "\t" for char in value):
        raise ValueError(f"refusing value {value!r}: it contains a line break or control character")
    if ";" in value.replace("\\;", ""):
        raise ValueError(f"refusing value {value!r}: an unescaped ';' would start a comment")
    if value.startswith(("#", "[")):
        raise ValueError(f"refusing value {value!r}: a leading '#' or '[' reads as structure")
    if value != value.strip(_BLANKS):
        raise ValueError(f"refusing value {value!r}: Asterisk strips leading and trailing blanks")


def _check_key(key: str) -> None:
    """Refuse keys that would not read back as the key of a plain `key = value` line."""
    if not key or any(ord(char) < 33 or char in "=;" for char in key):
        raise ValueError(f"refusing key {key!r}: keys are not empty and hold no blank, '=' or ';'")
    if key.startswith(("#", "[", "\\")) or key.endswith("+"):
        raise ValueError(f"refusing key {key!r}: its first or last character has a meaning")


class Document:
    """One configuration file as text, with the sections, options and directives Asterisk reads.

    Documents are immutable: the edit methods return a new document and leave this one as it was.
    """

    def __init__(
        self, text: str, path: str, bom: bool, identity: tuple[int, int] | None = None
    ) -> None:
        """Use `Document.parse`; this takes text already decoded and without its byte order mark."""
        self.path = path
        # (st_dev, st_ino) of the file read, so that a write can tell it is still that file.
        self.identity = identity
        self._text = text
        self._bom = bom

    @classmethod
    def parse(
        cls, data: bytes | str, path: str, identity: tuple[int, int] | None = None
    ) -> Document:
        """Read `data`, the content of the file at `path`; any bytes are accepted.

        Bytes that are not UTF-8 are decoded with surrogateescape so that they come back unchanged.
        A UTF-8 byte order mark is set aside, as config.c skips it.
        """
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        bom = text.startswith(_BOM)
        return cls(text[1:] if bom else text, path, bom, identity)

    @property
    def text(self) -> str:
        """The whole file as text, byte order mark included."""
        return _BOM + self._text if self._bom else self._text

    def serialise(self) -> bytes:
        """The file's bytes: the bytes parsed, with the edits applied."""
        return self.text.encode("utf-8", "surrogateescape")

    @property
    def line_count(self) -> int:
        """How many lines the file has; text after the last newline counts as a line."""
        return self._text.count("\n") + 1

    @property
    def comment_depth_at_end(self) -> int:
        """The block-comment depth at the end of the file: not zero when a `;--` stays open."""
        depths = self._marks[1]
        return depths[-1] if depths else 0

    @cached_property
    def sections(self) -> tuple[Section, ...]:
        """Every section header Asterisk reads, in file order."""
        items = self._items(self._with_marks(self._lines_opening_with("[")), _is_head)
        return tuple(item for item in items if isinstance(item, Section))

    @cached_property
    def options(self) -> tuple[Option, ...]:
        """Every option line Asterisk reads, in file order; this reads the whole file."""
        return tuple(item for item in self._walk(0, None) if isinstance(item, Option))

    @cached_property
    def directives(self) -> tuple[Directive, ...]:
        """Every `#include`, `#tryinclude` and `#exec` outside comments, in file order."""
        items = self._items(self._with_marks(self._lines_opening_with("#")), _is_directive)
        return tuple(item for item in items if isinstance(item, Directive))

    def find(self, key: str, value: str | None = None) -> tuple[Option, ...]:
        """The options named `key` (ASCII letters compared caselessly, like strcasecmp), in order.

        With `value`, only those whose value is exactly `value`; the search then visits only the
        lines containing the value, which keeps `find("type", "transport")` fast in a big file.
        """
        wanted = _fold(key)
        if value:
            hits = self._hit_lines(self._text, value, also=wanted)
        else:
            hits = self._hit_lines(self._folded, wanted)

        def keep(entry: _Entry) -> bool:
            return (
                isinstance(entry, _Opt)
                and _fold(entry.key) == wanted
                and (value is None or entry.value == value)
            )

        items = self._items(self._with_marks(start for start, _ in hits), keep)
        return tuple(item for item in items if isinstance(item, Option))

    def find_sections(self, name: str) -> tuple[Section, ...]:
        """The section headers named `name` (ASCII letters compared caselessly), in order."""
        wanted = _fold(name)
        if wanted:
            starts: Iterable[int] = (start for start, _ in self._hit_lines(self._folded, wanted))
        else:
            starts = self._lines_opening_with("[")

        def keep(entry: _Entry) -> bool:
            return isinstance(entry, _Head) and _fold(entry.name) == wanted

        items = self._items(self._with_marks(starts), keep)
        return tuple(item for item in items if isinstance(item, Section))

    def section_at(self, line: int) -> Section | None:
        """The section that line `line` belongs to: the last header at or before it, if any."""
        start = self._line_start(line)
        end = self._text.find("\n", start)
        return self._last_header(len(self._text) if end < 0 else end, 0)

    def options_in(self, section: Section) -> tuple[Option, ...]:
        """The options written under this header, up to the next header."""
        items = self._walk(self._line_start(self._verified(section)), None)
        next(items)
        options: list[Option] = []
        for item in items:
            if isinstance(item, Section):
                break
            if isinstance(item, Option):
                options.append(item)
        return tuple(options)

    def with_value(self, option: Option, value: str) -> Document:
        """Return a copy in which exactly the characters of `option`'s value are `value`.

        Raise ValueError for a value that would change what Asterisk reads around it (comment
        characters, line breaks, a leading `#` or `[`, or anything that would not read back as
        this option with this value), and for an option this document does not hold as given.
        """
        _check_value(value)
        start = self._line_start(option.line)
        depth = self._depth_at(start)
        entry, after = self._scan_line(start, depth)
        held = (option.key, option.operator, option.value, option.span)
        if not isinstance(entry, _Opt) or entry[:4] != held:
            raise ValueError(
                f"{self.path} line {option.line} holds no option {option.key} as given"
            )
        first, last = option.span
        if self._text[start + first : start + last] != option.value:
            raise ValueError(
                f"{self.path} line {option.line}: the value of {option.key} is interrupted by a"
                " block comment; edit it by hand"
            )
        text = self._text[: start + first] + value + self._text[start + last :]
        edited = Document(text, self.path, self._bom)
        expected = (option.key, option.operator, value, (first, first + len(value)))
        edited._expect(start, depth, expected, after, option.line)
        return edited

    def with_option_added(self, section: Section, key: str, value: str) -> Document:
        """Return a copy with `key = value` on a new line after the section's last option.

        The new line copies the indentation and the spacing around `=` of the section's last
        option line (or else the file's most common layout) and the newline of the line it
        follows. Raise ValueError when the key or value cannot be written as one plain option
        line there, for example when the section's last option line opens a block comment.
        """
        _check_key(key)
        _check_value(value)
        options = self.options_in(section)
        anchor = options[-1].line if options else section.line
        style = self._style(options[-1] if options else None)
        start = self._line_start(anchor)
        depth = self._depth_at(start)
        held = self._scan_line(start, depth)
        line = f"{style.indent}{key}{style.before}={style.after}{value}"
        end = self._text.find("\n", start)
        if end < 0:
            text = self._text + self._newline + line
            added = len(text) - len(line)
        else:
            newline = "\r\n" if end > start and self._text[end - 1] == "\r" else "\n"
            text = self._text[: end + 1] + line + newline + self._text[end + 1 :]
            added = end + 1
        edited = Document(text, self.path, self._bom)
        if edited._scan_line(start, depth) != held:
            raise ValueError(f"{self.path} line {anchor}: adding a line after it would change it")
        expected = (key, "=", value, (len(line) - len(value), len(line)))
        edited._expect(added, held[1], expected, held[1], anchor + 1)
        return edited

    def _expect(
        self,
        start: int,
        depth: int,
        expected: tuple[str, str, str, tuple[int, int]],
        depth_after: int,
        line: int,
    ) -> None:
        """Refuse an edit unless the line at `start` reads as exactly the intended option.

        The block-comment depth after it must stay as it was, so that every later line does too.
        """
        entry, after = self._scan_line(start, depth)
        if not isinstance(entry, _Opt) or entry[:4] != expected or after != depth_after:
            raise ValueError(
                f"{self.path} line {line}: {expected[0]} = {expected[2]!r} would not read back"
                " as that option"
            )

    def _verified(self, section: Section) -> int:
        """Return the header's line, after checking that this document has that very header."""
        start = self._line_start(section.line)
        entry, _ = self._scan_line(start, self._depth_at(start))
        if not isinstance(entry, _Head) or Section(self.path, section.line, *entry) != section:
            raise ValueError(f"{self.path} line {section.line} holds no section [{section.name}]")
        return section.line

    def _style(self, model: Option | None) -> _Style:
        """The layout of the model option's line, or else the most common one in the file."""
        if model is not None:
            start = self._line_start(model.line)
            entry, _ = self._scan_line(start, self._depth_at(start))
            if isinstance(entry, _Opt) and entry.style is not None:
                return entry.style
        counts: dict[_Style, int] = {}
        for _, entry in islice(self._entries(0), _STYLE_SAMPLE):
            if isinstance(entry, _Opt) and entry.style is not None:
                counts[entry.style] = counts.get(entry.style, 0) + 1
        return max(counts, key=counts.__getitem__, default=_Style("", " ", " "))

    @cached_property
    def _newline(self) -> str:
        """The file's most common line ending, for a line added after an unterminated last line."""
        return "\r\n" if self._text.count("\r\n") * 2 > self._text.count("\n") else "\n"

    @cached_property
    def _folded(self) -> str:
        return _fold(self._text)

    @cached_property
    def _blocks(self) -> list[int]:
        """How many newlines precede each 4 KiB block, to convert offsets and line numbers."""
        counts = [0]
        for offset in range(0, len(self._text), _BLOCK):
            counts.append(counts[-1] + self._text.count("\n", offset, offset + _BLOCK))
        return counts

    @cached_property
    def _marks(self) -> tuple[list[int], list[int]]:
        """The lines holding `;--` or `--;` and the block-comment depth after each of them.

        Only those lines can change the depth, so the depth before any other line is the depth
        after the last such line above it.
        """
        starts: set[int] = set()
        for needle in (";--", "--;"):
            starts.update(start for start, _ in self._hit_lines(self._text, needle))
        ordered = sorted(starts)
        depths: list[int] = []
        for start in ordered:
            depths.append(self._scan_line(start, depths[-1] if depths else 0)[1])
        return ordered, depths

    def _line_no(self, offset: int) -> int:
        block = offset // _BLOCK
        return self._blocks[block] + self._text.count("\n", block * _BLOCK, offset) + 1

    def _line_start(self, line: int) -> int:
        """The offset where line `line` (1-based) starts; ValueError when there is no such line."""
        if not 1 <= line <= self.line_count:
            raise ValueError(f"{self.path} has no line {line}")
        block = bisect.bisect_left(self._blocks, line - 1) - 1
        if block < 0:
            return 0
        offset, seen = block * _BLOCK, self._blocks[block]
        while seen < line - 1:
            offset = self._text.index("\n", offset) + 1
            seen += 1
        return offset

    def _depth_at(self, start: int) -> int:
        offsets, depths = self._marks
        index = bisect.bisect_left(offsets, start) - 1
        return depths[index] if index >= 0 else 0

    def _raw(self, start: int) -> str:
        """The line starting at `start`, with its newline if it has one."""
        end = self._text.find("\n", start)
        return self._text[start:] if end < 0 else self._text[start : end + 1]

    def _swallowed(self, start: int) -> bool:
        """Whether config.c's loop that skips an over-long line eats the line at `start` too."""
        previous = self._text.rfind("\n", 0, start - 1) + 1 if start else start
        if start - previous < _SURELY_SHORT:
            return False
        length = _fgets_length(self._text[previous:start], self._bom and not previous)
        return _swallows_next(length, True)

    def _scan_line(self, start: int, depth: int) -> tuple[_Entry | None, int]:
        """Read the line at `start` given the depth before it; skipped lines read as nothing."""
        raw = self._raw(start)
        if _fgets_length(raw, self._bom and not start) >= _FGETS_LIMIT or self._swallowed(start):
            return None, depth
        return _read(_content(raw), depth)

    def _hit_lines(self, haystack: str, needle: str, also: str = "") -> Iterator[tuple[int, int]]:
        """Yield (line start, offset) for the first occurrence of `needle` on each line.

        With `also`, only lines whose ASCII-folded text contains `also` as well.
        """
        text = self._text
        folded = self._folded if also else text
        hit = haystack.find(needle)
        while hit >= 0:
            start = text.rfind("\n", 0, hit) + 1
            end = text.find("\n", hit)
            if folded.find(also, start, len(text) if end < 0 else end) >= 0:
                yield start, hit
            if end < 0:
                return
            hit = haystack.find(needle, end + 1)

    def _lines_opening_with(self, char: str) -> Iterator[int]:
        """Yield the lines whose first character other than blanks is `char`."""
        for start, hit in self._hit_lines(self._text, char):
            if not self._text[start:hit].strip(_BLANKS):
                yield start

    def _with_marks(self, starts: Iterable[int]) -> Iterator[int]:
        """Add the lines with block-comment marks, where text may follow a closed comment."""
        previous = -1
        for start in heapq.merge(starts, self._marks[0]):
            if start != previous:
                yield start
                previous = start

    def _items(self, starts: Iterable[int], keep: Callable[[_Entry], bool]) -> Iterator[_Item]:
        """Read the given lines (in ascending order) and yield what `keep` accepts of their items.

        Each option or directive gets the header above it; the search for that header stops at
        the previous one's line, whose section is known, so the total work stays linear.
        """
        section: Section | None = None
        floor = position = 0
        line = 1
        for start in starts:
            entry, _ = self._scan_line(start, self._depth_at(start))
            if entry is None or not keep(entry):
                continue
            line += self._text.count("\n", position, start)
            position = start
            if isinstance(entry, _Head):
                yield Section(self.path, line, *entry)
                continue
            section = self._last_header(start, floor) or section
            floor = start
            if isinstance(entry, _Opt):
                key, operator, value, span, _ = entry
                yield Option(self.path, line, section, key, operator, value, span)
            else:
                yield Directive(self.path, line, section, *entry)

    def _last_header(self, end: int, floor: int) -> Section | None:
        """The last section header on a line starting in [floor, end), or None."""
        starts, sections = self._headers
        index = bisect.bisect_left(starts, end) - 1
        return sections[index] if index >= 0 and starts[index] >= floor else None

    @cached_property
    def _headers(self) -> tuple[list[int], list[Section]]:
        """Every section header: where its line starts, and the section. Read once per document,
        so that each search (ten keys over 30,000 sections on a FreePBX box) only looks it up."""
        starts: list[int] = []
        sections: list[Section] = []
        previous = -1
        for start in heapq.merge(self._lines_opening_with("["), self._marks[0]):
            if start == previous:
                continue
            previous = start
            entry, _ = self._scan_line(start, self._depth_at(start))
            if isinstance(entry, _Head):
                starts.append(start)
                sections.append(Section(self.path, self._line_no(start), *entry))
        return starts, sections

    def _entries(self, start: int) -> Iterator[tuple[int, _Entry]]:
        """Read every line from the one at `start` on; yield (line number, entry) where found."""
        text = self._text
        depth = self._depth_at(start)
        line = self._line_no(start)
        swallowed = self._swallowed(start)
        while True:
            end = text.find("\n", start)
            raw = text[start:] if end < 0 else text[start : end + 1]
            length = _fgets_length(raw, self._bom and not start)
            if not swallowed and length < _FGETS_LIMIT:
                entry, depth = _read(_content(raw), depth)
                if entry is not None:
                    yield line, entry
            if end < 0:
                return
            swallowed = _swallows_next(length, True)
            start, line = end + 1, line + 1

    def _walk(self, start: int, section: Section | None) -> Iterator[_Item]:
        """Yield the sections, options and directives from the line at `start` on, in order.

        `section` is the section in effect before that line.
        """
        for line, entry in self._entries(start):
            if isinstance(entry, _Head):
                section = Section(self.path, line, *entry)
                yield section
            elif isinstance(entry, _Opt):
                key, operator, value, span, _ = entry
                yield Option(self.path, line, section, key, operator, value, span)
            else:
                yield Directive(self.path, line, section, *entry)


def _is_head(entry: _Entry) -> bool:
    return isinstance(entry, _Head)


def _is_directive(entry: _Entry) -> bool:
    return isinstance(entry, _Dir)


def _content(raw: str) -> str:
    """A line's text as config.c sees it: up to its newline or a NUL byte.

    The `\\r` of a `\\r\\n` stays, as in config.c's buffer; stripping removes it like any blank.
    """
    return raw.partition("\n")[0].partition("\0")[0]


@dataclass(frozen=True, slots=True)
class TreeOption:
    """An option of a tree of files: the document it is in, and the section it fills.

    `section` is the section config.c adds the option to: for options before the first header of
    an included file, the section the file was included in; under `[name](+)`, the section added to.
    """

    document: Document
    option: Option
    section: Section | None


@dataclass(eq=False)
class _Visit:
    """One reading of a file; a file included twice is read twice, maybe into other sections."""

    document: Document
    order: tuple[int, ...]
    start: Section | None
    children: list[tuple[int, _Visit]] = field(default_factory=list)


class _Sections:
    """Finds the section config.c fills: the header's own, or for `(+)` the one it adds to."""

    def __init__(self) -> None:
        self.visits: list[_Visit] = []
        self._named: dict[tuple[str, str], tuple[Section, ...]] = {}
        self._targets: dict[tuple[tuple[int, ...], int], Section] = {}

    def effective(self, visit: _Visit, section: Section | None) -> Section | None:
        """The section an item under `section` (None: before any header) fills in this visit."""
        if section is None:
            return visit.start
        if not section.append:
            return section
        key = (visit.order, section.line)
        if key not in self._targets:
            self._targets[key] = self._target(visit, section)
        return self._targets[key]

    def named(self, document: Document, name: str) -> tuple[Section, ...]:
        """The document's headers named `name`, found once per document and name."""
        key = (document.path, _fold(name))
        if key not in self._named:
            self._named[key] = document.find_sections(name)
        return self._named[key]

    def _target(self, visit: _Visit, section: Section) -> Section:
        """ast_category_get(): the first section read before this one with its name and filter."""
        here = (*visit.order, section.line)
        found = [
            ((*other.order, candidate.line), candidate)
            for other in self.visits
            for candidate in self.named(other.document, section.name)
            if not candidate.append
            and (*other.order, candidate.line) < here
            and _matches(other.document, candidate, section.filter)
        ]
        if not found:
            raise ConfFileError(
                f"{section.path} line {section.line}: [{section.name}](+) adds to no earlier"
                f" section [{section.name}], so Asterisk refuses the configuration"
            )
        return min(found, key=lambda pair: pair[0])[1]


def _matches(document: Document, section: Section, conditions: str) -> bool:
    """Approximate does_category_match(): every `name=value` pair must match one option.

    config.c matches POSIX extended regular expressions against the section's variables at that
    moment; this uses Python's re against the options written under the header, which agrees
    for ordinary patterns. Templates match only with `TEMPLATES=include` or `TEMPLATES=restrict`.
    """
    templates: str | None = None
    pairs: list[tuple[str, str]] = []
    for condition in re.split("[,&]", conditions) if conditions else []:
        name, equals, value = condition.partition("=")
        if not equals:
            return False
        if name.strip() == "TEMPLATES":
            templates = value.strip().lower()
        else:
            pairs.append((name.strip(), value.strip()))
    allowed = {None: not section.template, "include": True, "restrict": section.template}
    if not allowed.get(templates, False):
        return False
    options = document.options_in(section) if pairs else ()
    try:
        return all(
            any(re.search(name, o.key) and re.search(value, o.value) for o in options)
            for name, value in pairs
        )
    except re.error:
        return False


class Tree:
    """A top-level file and every file it includes, read in the order Asterisk reads them.

    `documents` maps each file's path to its document; `execs` lists the `#exec` directives,
    whose output ipwatch cannot know, so a caller can refuse to edit what they might override.
    """

    def __init__(self, top: Path, sections: _Sections, execs: tuple[Directive, ...]) -> None:
        self.top = top
        self.execs = execs
        self.documents = {Path(visit.document.path): visit.document for visit in sections.visits}
        self._sections = sections

    def options(self) -> Iterator[TreeOption]:
        """Every option in Asterisk's reading order, an included file's at its `#include`."""
        return self._read(self._sections.visits[0], lambda document: document.options)

    def find(self, key: str, value: str | None = None) -> tuple[TreeOption, ...]:
        """The options named `key` (and valued `value`), as `Document.find`, in reading order."""
        return tuple(self._read(self._sections.visits[0], lambda doc: doc.find(key, value)))

    def find_sections(self, name: str) -> tuple[Section, ...]:
        """The headers named `name` in every file, in reading order, each header once."""
        placed = sorted(
            (
                ((*visit.order, section.line), section)
                for visit in self._sections.visits
                for section in self._sections.named(visit.document, name)
            ),
            key=lambda pair: pair[0],
        )
        return tuple(dict.fromkeys(section for _, section in placed))

    def _read(
        self, visit: _Visit, pick: Callable[[Document], Sequence[Option]]
    ) -> Iterator[TreeOption]:
        """Yield the picked options of a visit, each included file's where its directive is."""
        children = iter(visit.children)
        pending = next(children, None)
        for option in pick(visit.document):
            while pending is not None and pending[0] < option.line:
                yield from self._read(pending[1], pick)
                pending = next(children, None)
            section = self._sections.effective(visit, option.section)
            yield TreeOption(visit.document, option, section)
        while pending is not None:
            yield from self._read(pending[1], pick)
            pending = next(children, None)


@dataclass(frozen=True)
class Limits:
    """How much reading one tree may cost; Asterisk has no such bounds but ipwatch needs them.

    Anyone who can write a file of the tree can make it huge, or a FIFO, or make every file of a
    level include every file of the next: not a cycle, and Asterisk reads a file again each time
    it is included, so ten levels of four files are a million readings. Real configs, FreePBX's
    included, read a few dozen files of a few megabytes at most. Depth is Asterisk's own limit.
    """

    file_size: int = 16 * MIB
    readings: int = 1000  # a file counts each time it is included
    total_size: int = 64 * MIB  # the sizes of all readings together


DEFAULT_LIMITS = Limits()


class _Loader:
    """Follows `#include` and `#tryinclude` as config.c does, tracking the current section.

    config.c starts an included file in the config's current category (the last one created, or
    added to with `(+)`), and files matched by one glob share the including call's local state.
    Each file is read from disk once and its parse reused; it is still visited at every include.
    """

    def __init__(self, config_dir: Path, limits: Limits, asterisk_user: str | None) -> None:
        self.config_dir = config_dir
        self.limits = limits
        # As root: whose rights bound what is read and edited outside the config directory.
        self.asterisk_user = asterisk_user if os.geteuid() == 0 else None
        self._inside = os.path.realpath(config_dir) + os.sep
        self.sections = _Sections()
        self.execs: list[Directive] = []
        self._documents: dict[Path, Document] = {}
        self._readings = 0
        self._size = 0
        self._trail: list[str] = []  # the include directives leading to the file being read

    def load(
        self,
        path: Path,
        order: tuple[int, ...],
        start: Section | None,
        current: Section | None,
        stack: tuple[Path, ...],
    ) -> tuple[_Visit, Section | None]:
        """Read one file and what it includes; return its visit and the current section after."""
        visit = _Visit(self._count(self._document(path, top=len(stack) == 1)), order, start)
        self.sections.visits.append(visit)
        previous = 0
        for directive in visit.document.directives:
            if directive.section is not None and directive.section.line > previous:
                current = self.sections.effective(visit, directive.section)
            previous = directive.line
            if directive.kind == "exec":
                self.execs.append(directive)
            else:
                current = self._include(visit, directive, current, stack)
        last = visit.document.section_at(visit.document.line_count)
        if last is not None and last.line > previous:
            current = self.sections.effective(visit, last)
        return visit, current

    def _include(
        self, visit: _Visit, directive: Directive, current: Section | None, stack: tuple[Path, ...]
    ) -> Section | None:
        """Follow one include directive; return the config's current section after it."""
        where = f"{directive.path} line {directive.line}"
        paths = self._expand(directive.argument)
        deep = len(stack) > _MAX_INCLUDE_DEPTH
        if directive.kind == "tryinclude" and (deep or not paths):
            return current
        if not paths:
            raise ConfFileError(f'{where}: #include "{directive.argument}" matches no file')
        if deep:
            raise ConfFileError(f"{where}: includes nest deeper than Asterisk's limit of 10")
        local = current
        for index, path in enumerate(paths):
            real = path.resolve()
            if real in stack:
                raise ConfFileError(f"{where}: including {path} again makes an include cycle")
            order = (*visit.order, directive.line, index)
            self._trail.append(self._where(directive))
            child, current = self.load(path, order, local, current, (*stack, real))
            self._trail.pop()
            visit.children.append((directive.line, child))
            if child.document.comment_depth_at_end and index + 1 < len(paths):
                raise ConfFileError(
                    f"{path} ends inside a block comment, which Asterisk carries into"
                    f" {paths[index + 1]}; close it"
                )
            last = child.document.section_at(child.document.line_count)
            local = self.sections.effective(child, last) if last else child.start
        return current

    def _expand(self, argument: str) -> list[Path]:
        """The regular files an include argument names, in the order glob() gives them.

        config.c joins relative paths to the config directory and calls glob() with GLOB_BRACE
        and GLOB_NOMAGIC: each brace alternative is globbed and sorted on its own (glibc sorts
        with strcoll; byte order here, which is what the C and C.UTF-8 locales give).
        """
        found: list[str] = []
        for pattern in _braces(os.path.join(self.config_dir, argument)):
            if _GLOB_MAGIC.search(pattern):
                found.extend(sorted(glob.glob(pattern), key=os.fsencode))
            else:
                found.append(pattern)
        return [Path(name) for name in found if os.path.isfile(name)]

    def _document(self, path: Path, top: bool) -> Document:
        if path not in self._documents:
            inspect = self._on_behalf if self.asterisk_user else None
            self._documents[path] = read_document(
                path, self.limits.file_size, top=top, inspect=inspect
            )
        return self._documents[path]

    def _on_behalf(self, descriptor: int, found: os.stat_result) -> None:
        """Refuse, before root reads it, a file outside the config directory that the Asterisk
        user could not read and write: an `#include` would let that user make root edit it."""
        assert self.asterisk_user is not None
        # The file actually opened, whatever links led to it.
        real = os.readlink(f"/proc/self/fd/{descriptor}")
        if real.startswith(self._inside):
            return
        user = self.asterisk_user
        chain = f"{' -> '.join(self._trail)}: " if self._trail else ""
        try:
            allowed = _may_read_and_write(pwd.getpwnam(user), found)
        except KeyError:
            raise ConfFileError(
                f"{chain}{real} is outside {self.config_dir}, and asterisk.user {user!r} is no"
                " user here to check it against; set asterisk.user to the user Asterisk runs as"
            ) from None
        if not allowed:
            raise ConfFileError(
                f"{chain}{real} is outside {self.config_dir} and {user} (asterisk.user) cannot"
                f" read and write it, so root will not edit it on Asterisk's behalf; move it into"
                f" {self.config_dir} or let {user} read and write it"
            )

    def _count(self, document: Document) -> Document:
        """Count one more reading of `document`; refuse a tree that reads too much."""
        self._readings += 1
        self._size += len(document.text)
        if self._readings > self.limits.readings:
            too_much = f"more than {self.limits.readings} files"
        elif self._size > self.limits.total_size:
            too_much = f"more than {size_text(self.limits.total_size)}"
        else:
            return document
        raise ConfFileError(
            f"{' -> '.join(self._trail)}: these includes read {too_much} (Asterisk reads a file"
            " again each time it is included); include each file once"
        )

    def _where(self, directive: Directive) -> str:
        """The directive's file and line; below the top file, relative to the config directory."""
        path = Path(directive.path)
        if self._trail and path.is_relative_to(self.config_dir):
            path = path.relative_to(self.config_dir)
        return f"{path} line {directive.line}"


def read_document(
    path: Path,
    limit: int = Limits.file_size,
    *,
    top: bool = True,
    inspect: Callable[[int, os.stat_result], None] | None = None,
) -> Document:
    """Read and parse the Asterisk config file at `path`, which must be a regular file.

    Never blocks (a FIFO) and reads at most `limit` bytes (`/dev/zero`, a huge file); raise
    ConfFileError naming the file and what to do otherwise. `top`: the file a target names;
    `inspect` may refuse the opened file before it is read (see read_regular_file).
    """
    identity: list[tuple[int, int]] = []

    def note(descriptor: int, found: os.stat_result) -> None:
        if inspect is not None:
            inspect(descriptor, found)
        identity.append((found.st_dev, found.st_ino))

    try:
        data = read_regular_file(path, limit, inspect=note)
    except (OSError, Unfit) as problem:
        raise ConfFileError(_unreadable(path, problem, limit, top)) from None
    return Document.parse(data, str(path), identity[0])


def read_optional_document(path: Path) -> Document | None:
    """`read_document`, or None when `path` is missing or not a regular file (Asterisk skips
    those): for sorcery.conf beside pjsip.conf."""
    try:
        data = read_regular_file(path, Limits.file_size)
    except FileNotFoundError:
        return None
    except (OSError, Unfit) as problem:
        if isinstance(problem, Unfit) and not problem.too_large:
            return None
        raise ConfFileError(_unreadable(path, problem, Limits.file_size, True)) from None
    return Document.parse(data, str(path))


def _may_read_and_write(account: pwd.struct_passwd, found: os.stat_result) -> bool:
    """Whether the file's permission bits let `account` read and write it (ACLs aside)."""
    if found.st_uid == account.pw_uid:
        need = stat.S_IRUSR | stat.S_IWUSR
    elif found.st_gid in os.getgrouplist(account.pw_name, account.pw_gid):
        need = stat.S_IRGRP | stat.S_IWGRP
    else:
        need = stat.S_IROTH | stat.S_IWOTH
    return found.st_mode & need == need


def _unreadable(path: Path, problem: OSError | Unfit, limit: int, top: bool) -> str:
    if isinstance(problem, OSError):
        return f"cannot read {path}: {problem.strerror}"
    if problem.too_large:
        return (
            f"{path}: {problem.reason}, more than the {size_text(limit)} ipwatch reads from one"
            " config file; check that the target names the right file"
        )
    if top:
        return f"{path}: {problem.reason}; point the target at Asterisk's real config file"
    return f"{path}: {problem.reason}; Asterisk skips it, so remove it or make it a regular file"


def _braces(pattern: str) -> list[str]:
    """Expand `{a,b}` groups, nested ones included, in order; unbalanced braces stay literal."""
    opening = pattern.find("{")
    if opening < 0:
        return [pattern]
    depth, begin, alternatives = 0, opening + 1, []
    for index in range(opening + 1, len(pattern)):
        char = pattern[index]
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif char in ",}" and not depth:
            alternatives.append(pattern[begin:index])
            begin = index + 1
            if char == "}":
                prefix, suffix = pattern[:opening], pattern[index + 1 :]
                return [found for alt in alternatives for found in _braces(prefix + alt + suffix)]
    return [pattern]


def load_tree(
    top: Path,
    config_dir: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    asterisk_user: str | None = None,
) -> Tree:
    """Read `top` and, recursively, every file it includes.

    Relative include paths start from `config_dir` (Asterisk's astetcdir), by default the top
    file's directory. Raise ConfFileError when a file cannot be read, is not a regular file or is
    too large, an `#include` matches no file, includes nest more than 10 deep, form a cycle or
    read more than `limits` allow, or an `(+)` section adds to nothing. A `#tryinclude` that
    matches nothing is skipped; `#exec` is recorded in `Tree.execs`, not run.

    Run as root with `asterisk_user` (asterisk.user), a file outside `config_dir` that this user
    could not read and write is refused before it is read: whoever may edit Asterisk's files
    could otherwise `#include` any file of root's and have ipwatch rewrite it.
    """
    loader = _Loader(top.parent if config_dir is None else config_dir, limits, asterisk_user)
    loader.load(top, (), None, None, (top.resolve(),))
    return Tree(top, loader.sections, tuple(loader.execs))
