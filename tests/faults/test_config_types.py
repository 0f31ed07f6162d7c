"""Every key of the config schema given a value of the wrong type: exit 78, the key path named,
one line per problem, no traceback. The keys come from the every-key sample config."""

from __future__ import annotations

import copy
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ipwatch import config
from ipwatch.errors import ConfigError
from tests.fuzz.sample_config import EVERY_KEY, leaves
from tests.support import run_ipwatch

CASES = [(path, value) for path, value in leaves(EVERY_KEY) if path]


def named(path: str) -> str:
    """What an error must start with: the key path (a list item may be named by its list)."""
    return re.sub(r"\[\d+\]$", "", path)


def wrong(value: Any) -> Any:
    """A TOML value of another type than `value`."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return "12"
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return "not a list"
    return 5  # a table


def with_wrong(path: str) -> dict[str, Any]:
    raw = copy.deepcopy(EVERY_KEY)
    *parents, last = [
        int(part[1:-1]) if part.startswith("[") else part
        for part in path.replace("[", ".[").split(".")
    ]
    node: Any = raw
    for part in parents:
        node = node[part]
    node[last] = wrong(node[last])
    return raw


def to_toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {to_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def document(raw: dict[str, Any]) -> str:
    lines = []
    for key, value in raw.items():
        if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            for table in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {to_toml(v)}" for k, v in table.items()]
        else:
            lines.insert(0, f"{key} = {to_toml(value)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("path", "value"), CASES, ids=[path for path, _ in CASES])
def test_a_wrong_type_names_the_key(path: str, value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        config.parse(with_wrong(path), "f.toml")
    assert any(m.startswith(f"f.toml: {named(path)}") for m in raised.value.messages), raised.value


def test_the_cli_says_so_for_every_key(tmp_path: Path) -> None:
    def check(index: int, path: str) -> str | None:
        file = tmp_path / f"{index}.toml"
        file.write_text(document(with_wrong(path)))
        finished = run_ipwatch("config", "check", config=file, state_dir=tmp_path / "state")
        ok = (
            finished.returncode == 78
            and f"{file}: {named(path)}" in finished.stderr
            and "Traceback" not in finished.stderr
        )
        return None if ok else f"{path}: exit {finished.returncode}: {finished.stderr.strip()}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        failures = [f for f in pool.map(check, range(len(CASES)), [p for p, _ in CASES]) if f]
    assert not failures, "\n".join(failures)
