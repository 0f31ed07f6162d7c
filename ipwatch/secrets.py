"""Reading secrets from a `*_file` key or a systemd credential, never from a readable file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ipwatch.errors import ConfigError


def read_secret(path: str | None, credential: str) -> str | None:
    """Return the secret in `path`, else in systemd's credential `credential`, else None.

    A file that group or others may read is refused: the AMI secret lets its holder restart the
    PBX. systemd's LoadCredential= hands over a private copy, so a root-owned secret needs no
    loosening for a daemon running as asterisk.
    """
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory or not (Path(directory) / credential).is_file():
            return None
        path = str(Path(directory) / credential)
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            [f"{path}: cannot be read ({error.strerror}); check the path and its owner"]
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError([f"{path}: readable by group or others; run chmod 600 {path}"])
    return text.strip()


def ami_secret(secret_file: str | None) -> str:
    secret = read_secret(secret_file, "ami-secret")
    if secret is None:
        raise ConfigError(
            [
                "asterisk.ami.secret_file: not set and no systemd credential ami-secret;"
                " point it at a file (mode 600) holding the AMI user's secret"
            ]
        )
    return secret
