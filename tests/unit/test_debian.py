"""debian/ agrees with pyproject.toml: the version, and the libraries with their lowest versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from ipwatch import __version__

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_package_version_is_ipwatch_s() -> None:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"ipwatch \(([^)]+)\) \S+; urgency=\w+", first)
    assert match, first
    # A local build may add "+suffix" (tests/package/check_deb.sh builds one to upgrade to).
    assert re.split(r"[+~]", match.group(1))[0] == PROJECT["version"] == __version__


def test_the_package_depends_on_each_library_from_the_lowest_version_allowed() -> None:
    control = (ROOT / "debian" / "control").read_text()
    depends = re.search(r"^Depends:(.*?)^\S", control, re.S | re.M)
    assert depends
    for requirement in PROJECT["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_-]+)>=([0-9.]+)(,<[0-9.]+)?", requirement)
        assert match, requirement
        package = f"python3-{match.group(1).lower()}"
        assert f"{package} (>= {match.group(2)})" in depends.group(1), requirement


def test_the_package_is_architecture_all() -> None:
    control = (ROOT / "debian" / "control").read_text()
    assert re.findall(r"^Architecture: (\S+)", control, re.M) == ["all"]
