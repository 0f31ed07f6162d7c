"""The options of a tree grouped by the section Asterisk fills, with templates resolved. Pure.

PJSIP objects and chan_sip peers read the same way: a section's value for a key is the last one
written for it, counting first the templates it inherits (config.c copies their variables when it
reads the header, depth first) and then its own lines, `[name](+)` additions included.

Only the keys a check asks for are read, with the model's targeted searches: reading every line of
a 10,000-endpoint pjsip.conf costs most of the second `doctor` may take.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ipwatch.asterisk.conf import Section, Tree, TreeOption

# Headers with entries in parentheses; few lines match, so a regex finds them without reading
# every line, and the model then says which section the line really is.
_INHERITING = re.compile(r"^[ \t]*\[[^\]\n]*\][ \t]*\([^)\n]*\)", re.MULTILINE)
# config.c follows templates of templates; Asterisk has no limit, a cycle is not possible there
# (a template must be read before it is inherited), but a name clash could make one here.
_MAX_DEPTH = 10


@dataclass(frozen=True)
class Value:
    """A key's value for a section, and the option line that gives it."""

    text: str
    source: TreeOption

    @property
    def owner(self) -> Section:
        """The section the line is in: the object itself, or the template it comes from."""
        assert self.source.section is not None
        return self.source.section


class Sections:
    """Answers what each section's values are; reads the `type` lines of `kinds` at once, and
    each other key once, when it is first asked for (a key no check needs costs nothing)."""

    def __init__(self, tree: Tree, kinds: Iterable[str] = ()) -> None:
        self.tree = tree
        self._by_key: dict[str, dict[Section, list[TreeOption]]] = {}
        # Only `type = <kind>` lines are looked up: reading all 30,000 `type` lines of a big
        # PBX costs half a second, and a section that inherits an endpoint template while
        # setting a type of another kind itself is not a configuration anyone writes.
        self._typed = {kind: _grouped(tree.find("type", kind)) for kind in kinds}
        types: dict[Section, list[TreeOption]] = {}
        for grouped in self._typed.values():
            types.update(grouped)
        self._by_key["type"] = types
        self._chains: dict[Section, tuple[Section, ...]] = {}
        self._templates: dict[str, Section | None] = {}
        self._inheriting = tuple(self._find_inheriting())

    def typed(self, kind: str) -> list[Section]:
        """The non-template sections whose `type` is `kind`, written or inherited, in file order."""
        direct = self._typed[kind]
        found = {s for s in direct if not s.template and not s.append}
        for section in self._inheriting:
            if section.template or section in found or section in self._by_key["type"]:
                continue
            value = self.value(section, "type")
            if value is not None and value.text.lower() == kind:
                found.add(section)
        return sorted(found, key=lambda s: (s.path, s.line))

    def _options(self, key: str) -> dict[Section, list[TreeOption]]:
        folded = key.lower()
        if folded not in self._by_key:
            self._by_key[folded] = _grouped(self.tree.find(key))
        return self._by_key[folded]

    @property
    def inheriting(self) -> tuple[Section, ...]:
        """The sections whose headers name templates."""
        return self._inheriting

    def setting(self, key: str) -> list[Section]:
        """The sections that have a line for `key` themselves."""
        return list(self._options(key))

    def _find_inheriting(self) -> Iterator[Section]:
        """Every section header that names templates, once each."""
        seen: set[Section] = set()
        for document in self.tree.documents.values():
            text = document.text
            line, position = 1, 0
            for match in _INHERITING.finditer(text):
                line += text.count("\n", position, match.start())
                position = match.start()
                section = document.section_at(line)
                if section is not None and section.inherits and section not in seen:
                    seen.add(section)
                    yield section

    def chain(self, section: Section, depth: int = 0) -> tuple[Section, ...]:
        """The templates `section` inherits, in the order config.c copies them."""
        if not section.inherits:
            return ()
        if section in self._chains:
            return self._chains[section]
        chain: list[Section] = []
        for name in section.inherits if depth <= _MAX_DEPTH else ():
            template = self.template(name)
            if template is not None and template != section:
                chain += [*self.chain(template, depth + 1), template]
        self._chains[section] = tuple(chain)
        return self._chains[section]

    def template(self, name: str) -> Section | None:
        """The section `[x](name)` inherits from: the first one of that name, a template if any."""
        if name not in self._templates:
            found = self.tree.find_sections(name)
            marked = [s for s in found if s.template]
            plain = [s for s in found if not s.append]
            self._templates[name] = next(iter(marked or plain), None)
        return self._templates[name]

    def value(self, section: Section, key: str) -> Value | None:
        """The section's value for `key`, or None when nothing sets it."""
        grouped = self._options(key)
        last = grouped.get(section)
        if last is None:
            # The section's own lines come last and win; only without them do templates count.
            for owner in reversed(self.chain(section)):
                last = grouped.get(owner)
                if last is not None:
                    break
        return None if last is None else Value(last[-1].option.value, last[-1])

    def values(self, section: Section, key: str) -> list[Value]:
        """Every value for a key that adds up rather than overrides (PJSIP's local_net)."""
        grouped = self._options(key)
        return [
            Value(item.option.value, item)
            for owner in (*self.chain(section), section)
            for item in grouped.get(owner, ())
        ]


def _grouped(items: Iterable[TreeOption]) -> dict[Section, list[TreeOption]]:
    grouped: dict[Section, list[TreeOption]] = defaultdict(list)
    for item in items:
        if item.section is not None:
            grouped[item.section].append(item)
    return dict(grouped)
