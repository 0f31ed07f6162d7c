"""Keeping secrets out of what ipwatch prints: config dumps, error messages, logs."""

from __future__ import annotations

import re

MASK = "********"
# The userinfo of a URL's authority, up to its last "@" as urlsplit reads it: "user:pass@",
# "token@", "me:p@ss@". The user name goes too: for DDNS accounts it is half the credential.
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")


def mask_userinfo(text: str) -> str:
    """Hide the user:password@ (or token@) part of every URL in `text`."""
    return _USERINFO.sub(f"{MASK}@", text)
