"""rules: `.sops.yaml` is a pure function of the plan, and sops reads it as intended."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from conftest import EXAMPLE

from homestack.errors import UserError
from homestack.plan import load_plan
from homestack.secrets.model import SecretsPlan
from homestack.secrets.rules import render_rules, rules_are_current, write_rules


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    return load_plan(EXAMPLE)


def test_one_exact_rule_per_planned_file(plan: dict[str, Any]) -> None:
    config = yaml.safe_load(render_rules(SecretsPlan.from_plan(plan)))
    rules = config["creation_rules"]
    assert [r["path_regex"] for r in rules] == [
        "^" + p.replace(".", "\\.") + "$" for p in sorted(plan["secrets"])
    ]
    for rule, path in zip(rules, sorted(plan["secrets"]), strict=True):
        # the YAML anchors resolve to exactly the plan's recipients, in its order
        assert rule["key_groups"] == [{"age": plan["secrets"][path]["recipients"]}]


def test_rendering_is_deterministic_and_only_changes_with_the_plan(
    plan: dict[str, Any], tmp_path: Path
) -> None:
    secrets_plan = SecretsPlan.from_plan(plan)
    assert write_rules(tmp_path, secrets_plan) is True
    assert write_rules(tmp_path, secrets_plan) is False
    assert rules_are_current(tmp_path, secrets_plan)
    changed = copy.deepcopy(plan)
    changed["secrets"]["secrets/ca.yaml"]["recipients"].append(plan["guests"]["db"]["ageKey"])
    assert not rules_are_current(tmp_path, SecretsPlan.from_plan(changed))


def test_unknown_recipients_are_written_literally(plan: dict[str, Any]) -> None:
    changed = copy.deepcopy(plan)
    stranger = "age1sm3335pxw8lmhc3uwwqj5s0nsqqvnlutu0xjg7p7vc62hzpyna9srag25d"
    changed["secrets"]["secrets/ca.yaml"]["recipients"].append(stranger)
    text = render_rules(SecretsPlan.from_plan(changed))
    assert f"          - {stranger}\n" in text


def test_a_file_nobody_can_read_is_an_error(plan: dict[str, Any]) -> None:
    changed = copy.deepcopy(plan)
    changed["secrets"]["secrets/ca.yaml"]["recipients"] = []
    with pytest.raises(UserError, match=r"secrets\.secrets/ca\.yaml: nobody can decrypt it"):
        render_rules(SecretsPlan.from_plan(changed))


def test_metacharacters_are_escaped_for_re2(plan: dict[str, Any]) -> None:
    changed = copy.deepcopy(plan)
    entry = dict(changed["secrets"]["secrets/ca.yaml"], path="secrets/a+b (1).yaml")
    changed["secrets"] = {"secrets/a+b (1).yaml": entry}
    assert r"path_regex: ^secrets/a\+b \(1\)\.yaml$" in render_rules(SecretsPlan.from_plan(changed))
