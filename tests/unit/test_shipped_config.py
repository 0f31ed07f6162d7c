"""contrib/ipwatch.toml, the commented /etc/ipwatch/ipwatch.toml of the Debian package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from ipwatch import config, preflight

SHIPPED = Path(__file__).resolve().parents[2] / "contrib" / "ipwatch.toml"


def test_config_check_accepts_it_as_shipped_on_a_system_without_asterisk(tmp_path: Path) -> None:
    installed = tmp_path / "ipwatch.toml"  # with the package's mode, whatever the checkout's umask
    installed.write_bytes(SHIPPED.read_bytes())
    installed.chmod(0o644)
    loaded = config.load(str(installed))
    assert loaded.targets == ()  # nothing to read, so no Asterisk file or secret is needed
    assert preflight.problems(loaded) == []
    assert len(loaded.sources) >= 3


def uncommented(text: str) -> str:
    """The file with its commented-out settings (`#key = ...`, `#[table]`) switched on."""
    return re.sub(r"(?m)^#(?=\[|[a-z_]+ = )", "", text)


def test_its_commented_settings_are_valid_too() -> None:
    text = uncommented(SHIPPED.read_text())
    assert '\nfile = "/etc/asterisk/pjsip.conf"' in text
    parsed = config.parse(tomllib.loads(text), str(SHIPPED))
    assert {target.kind for target in parsed.targets} == {"pjsip", "chan_sip"}
    assert parsed.asterisk.ami.secret_file == "/etc/ipwatch/ami.secret"
    assert {source.kind for source in parsed.sources} >= {"stun", "dns-echo", "dns", "upnp"}
