"""What `config check` looks at beyond the config file: the targets' files, read and planned
without writing anything, and the secret files.

A config that passes `config check` should not fail at the first round, after every source was
asked: a target file that is missing or does not parse, a transport that is not there, and a
secret file that cannot be read are found here, all at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from ipwatch import reconcile
from ipwatch.addresses import Family
from ipwatch.config import Config, secret_files
from ipwatch.errors import IpwatchError
from ipwatch.plan import Loaded, make_plan
from ipwatch.secrets import read_secret

# Documentation addresses (RFC 5737, RFC 3849) that no file holds: planning for them takes every
# path a real change takes, refusals included (#exec, FreePBX's generated files, externhost),
# and the plan is only looked at, never written.
_PLACEHOLDERS: Mapping[Family, str] = {"ipv4": "192.0.2.1", "ipv6": "2001:db8::1"}
_AMI_SECRET_KEY = "asterisk.ami.secret_file"


def problems(config: Config) -> list[str]:
    """Every problem of `config`'s targets and secret files, one line each with its key path."""
    return _target_problems(config) + _secret_problems(config)


def _target_problems(config: Config) -> list[str]:
    addresses = {family: _PLACEHOLDERS[family] for family in config.families}
    found: list[str] = []
    loaded: list[Loaded] = []
    for index, target in enumerate(config.targets):
        try:
            user = config.asterisk.user
            items = [reconcile.load(part, user) for part in reconcile.expand(target)]
            make_plan(items, addresses)
        except IpwatchError as error:
            found.append(f"{config.path}: target[{index}]: {error}")
        else:
            loaded += items
    if not found:
        try:
            make_plan(loaded, addresses)  # what only shows across targets: a file in two
        except IpwatchError as error:
            found.append(f"{config.path}: target: {error}")
    return found


def _secret_problems(config: Config) -> list[str]:
    found = []
    for key, path in secret_files(config):
        if key == _AMI_SECRET_KEY and config.asterisk.control != "ami":
            continue  # not used
        try:
            read_secret(path, "")
        except IpwatchError as error:
            found.append(f"{config.path}: {key}: {error}")
    return found
