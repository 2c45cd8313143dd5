"""The one exception type for mistakes a user can make (bad input, missing programs)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits with code 2.

    The message names the file and the key at fault, e.g.
    ``inventory.toml: guests.db.address: 192.168.101.5 is outside networks.guests.cidr``.
    """

    exit_code = 2


class CheckFailed(UserError):
    """A check found problems; each finding is one line of ``findings``."""

    def __init__(self, summary: str, findings: list[str]) -> None:
        super().__init__(summary)
        self.findings = findings
