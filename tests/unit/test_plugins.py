"""The built-in kinds: found without reading entry points, yet registered as entry points too."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from ipwatch import plugins

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_the_built_in_table_is_pyprojects_entry_points() -> None:
    registered = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    assert registered == plugins.BUILT_IN


def test_every_built_in_kind_has_its_interface() -> None:
    interface = {plugins.SOURCES: ("Options", "ask"), plugins.UPDATERS: ("Options", "update")}
    for group, table in plugins.BUILT_IN.items():
        for kind in table:
            module = plugins.kinds(group).load(kind)
            assert all(hasattr(module, name) for name in interface[group]), kind


def test_a_config_of_built_in_kinds_reads_no_entry_points(tmp_path: Path) -> None:
    config = tmp_path / "ipwatch.toml"
    config.write_text(
        '[[source]]\nkind = "stun"\nservers = ["127.0.0.1:9"]\n'
        '[[ddns]]\nkind = "duckdns"\ndomains = ["pbx"]\n'
    )
    script = (
        "import sys\n"
        "from ipwatch import config\n"
        f"config.load({str(config)!r})\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=30
    )
    assert run.stdout == "False\n", run.stderr
