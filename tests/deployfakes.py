"""What the deploy tests answer in place of Nix: `nix build --json` as Nix prints it."""

from __future__ import annotations

import json


def nix_build_json(out: str, drv: str = "/nix/store/x.drv") -> str:
    """What `nix build --json` prints (Nix 2.8 and later) for a derivation of one output."""
    return json.dumps([{"drvPath": drv, "outputs": {"out": out}}]) + "\n"
