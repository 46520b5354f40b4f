"""Strict YAML for the files a user writes: PyYAML's safe loader with three refusals.

`yaml.safe_load` takes a duplicate key silently (the last one wins, so a
setting written twice is half ignored) and expands anchors and aliases
without bound (a few hundred bytes of `&a [*b, *b, ...]` grow to gigabytes:
a "billion laughs" file ran out of memory after a minute). Here:

* a duplicate key is refused, naming it and both lines;
* anchors (`&name`) and aliases (`*name`, also in `<<: *name` merges) are
  refused where they appear: config files never need them, and nothing is
  expanded, so a bomb is refused in the time it takes to read its first
  anchor;
* nesting deeper than `MAX_DEPTH` levels is refused before the parser recurses;
* every error, syntax errors too, is one `CqdError` line `FILE:LINE: what; fix`.

Everything else is `yaml.SafeLoader` (plain data: mappings, lists, strings,
numbers, booleans, null).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cqd_port.errors import CqdError

__all__ = ["MAX_DEPTH", "StrictLoader", "load_yaml_text", "load_yaml_file"]

MAX_DEPTH = 64  # nesting levels; a config has about 3


class _Refused(yaml.YAMLError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message, self.line = message, line


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys, anchors and aliases (`_Refused`)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"alias *{event.anchor} (anchors and aliases are not allowed here); write the value out", event.start_mark.line + 1)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(f"anchor &{anchor} (anchors and aliases are not allowed here); write the value out", event.start_mark.line + 1)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep, which no config needs; flatten it", event.start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first is not None:
                raise _Refused(f"duplicate key '{key}' (first at line {first}); keep one of them", line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)


def load_yaml_text(text: str, source: str | os.PathLike[str] = "<text>") -> Any:
    """Parse `text` strictly; a one-line CqdError `SOURCE:LINE: problem; fix` on any error."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except _Refused as exc:
        raise CqdError(f"{source}:{exc.line}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "invalid YAML").split())
        raise CqdError(f"{source}{where}: {problem}; fix the YAML syntax (indent with spaces, key: value)") from None


def load_yaml_file(path: str | os.PathLike[str]) -> Any:
    """Read and parse a YAML file strictly (`load_yaml_text`); unreadable files are one line too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CqdError(f"cannot read {path} ({exc}); check the file") from None
    return load_yaml_text(text, path)
