"""`tools mcp`: the homelab served to agents over the Model Context Protocol (stdio).

Read tools return what the plan and the checks say (never a secret value: the plan holds
none, secret files are read for metadata only). Actions are guarded: a proposed inventory
is validated by lib/, diffed, checked against the guards and written to a git branch
`proposals/…` or a patch file, never to the inventory itself; a deploy needs an approval
token a person produced with `tools plan approve` for that exact diff.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from homestack import auditlog, guards
from homestack.cliopts import inventory_option
from homestack.errors import UserError
from homestack.inventory import find_inventory
from homestack.plan import inspect, lib_dir, load_plan
from homestack.plandiff import PlanDiff, compare, resolve_against
from homestack.process import Runner, default_runner, error_line

INSTRUCTIONS = """\
Homestack: a homelab described by one inventory.toml; lib/ computes the plan from it.
Read with explain, plan, read_inventory, diff, guards, secrets_check, certs_check,
deploy_status, lab, audit_log. Change things only by propose_change (a whole new
inventory.toml; it is validated, diffed, checked against the guards and written to a
branch for a person to review) and deploy_dry_run. deploy needs an approval token that a
person printed with `tools plan approve` after reviewing the diff; you cannot make one.
"""

MAX_INVENTORY = 1 << 20


def _slug(title: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return words[:40].rstrip("-") or "change"


class Homelab:
    """What the MCP tools do, as plain methods over one inventory (what tests call too)."""

    def __init__(self, inventory: Path, runner: Runner = default_runner) -> None:
        self.inventory = Path(inventory).resolve()
        self.root = self.inventory.parent
        self.runner = runner

    # --- reading -------------------------------------------------------------------------

    def plan(self) -> dict[str, Any]:
        return load_plan(self.inventory, self.runner)

    def explain(self) -> dict[str, Any]:
        from homestack.explain import describe  # noqa: PLC0415

        return describe(self.plan())

    def plan_section(self, section: str | None) -> dict[str, Any]:
        plan = self.plan()
        if section is None:
            return {"sections": sorted(plan), **{k: v for k, v in plan.items() if k != "artifacts"}}
        if section not in plan:
            raise UserError(f"plan: no section {section!r} (sections: {', '.join(sorted(plan))})")
        return {section: plan[section]}

    def read_inventory(self) -> dict[str, Any]:
        return {"path": str(self.inventory), "text": self.inventory.read_text()}

    def diff(self, against: str) -> dict[str, Any]:
        if against.endswith(".toml") or Path(against).exists():
            # An agent compares with history or the deployed plan, not with files of its
            # choosing elsewhere on this machine.
            raise UserError(f"diff: {against}: give a git revision or `deployed`")
        old, label = resolve_against(self.inventory, against, self.runner)
        new = self.plan()
        return self._judged(
            compare(old, new, old_label=label, new_label=str(self.inventory)), old, new
        )

    def _judged(self, diff: PlanDiff, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        broken = guards.check(diff, guards.load_policy(self.inventory), old, new)
        return {
            **diff.to_json(),
            "guards": [v.to_json() for v in broken],
            "summary": diff.lines() + guards.violation_lines(broken),
        }

    def guards(self) -> list[dict[str, Any]]:
        return [g.to_json() for g in guards.load_policy(self.inventory)]

    def secrets_check(self) -> dict[str, Any]:
        from homestack.secrets import audit  # noqa: PLC0415
        from homestack.secrets.model import SecretsPlan  # noqa: PLC0415

        findings = audit.audit(self.root, SecretsPlan.from_plan(self.plan()))
        return {
            "ok": not findings,
            "findings": [{"path": f.path, "message": f.message} for f in findings],
        }

    def certs_check(self) -> dict[str, Any]:
        from homestack.certs.check import check  # noqa: PLC0415
        from homestack.certs.settings import CertSettings  # noqa: PLC0415

        # Without a runner nothing is decrypted: files and certificates only.
        findings = check(CertSettings.from_plan(self.plan(), self.root))
        return {"ok": not findings, "findings": [str(f) for f in findings]}

    def deploy_status(self, machines: list[str]) -> list[dict[str, Any]]:
        from homestack.deploy.remote import Ssh  # noqa: PLC0415
        from homestack.deploy.status import status  # noqa: PLC0415

        return [r.to_json() for r in status(self.plan(), self.runner, Ssh(), machines)]

    def lab(self, run_tests: bool) -> dict[str, Any]:
        from homestack.lab import checks, lifecycle  # noqa: PLC0415
        from homestack.lab.state import LabPaths  # noqa: PLC0415

        paths = LabPaths.from_env()
        rows = lifecycle.status(paths)
        out: dict[str, Any] = {"running": bool(rows), "processes": rows}
        if run_tests:
            if not rows:
                raise UserError("lab: not running; a person starts it with `tools lab up`")
            report = checks.run(self.plan(), paths, self.runner)
            data = report.to_json()
            out["tests"] = {k: v for k, v in data.items() if k != "checks"}
            out["failures"] = [c for c in data.get("checks", []) if not c.get("ok", True)]
        return out

    def audit_log(self, limit: int) -> list[dict[str, Any]]:
        entries = list(auditlog.read(auditlog.log_path(self.inventory)))
        return entries[-limit:] if limit > 0 else entries

    # --- guarded actions -----------------------------------------------------------------

    def propose(self, inventory_toml: str, title: str) -> dict[str, Any]:
        """Validate, diff and guard a whole new inventory; write it to a branch or a patch."""
        if len(inventory_toml.encode()) > MAX_INVENTORY:
            raise UserError("propose_change: the inventory is larger than 1 MiB")
        current = self.inventory.read_text()
        with tempfile.TemporaryDirectory(prefix="homestack-proposal-") as tmp:
            copy = Path(tmp) / self.inventory.name
            copy.write_text(inventory_toml)
            (Path(tmp) / "lib").symlink_to(lib_dir(self.inventory))
            found = inspect(copy, plan=True, runner=self.runner)
        if found.problems or found.plan is None:
            result = {
                "accepted": False,
                "why": "lib/ rejects the inventory",
                "problems": found.problems,
            }
            self._record("propose_change", title, "error: lib/ rejects the inventory")
            return result
        old = self.plan()
        diff = compare(old, found.plan, old_label=str(self.inventory), new_label="proposal")
        judged = self._judged(diff, old, found.plan)
        broken = guards.check(diff, guards.load_policy(self.inventory), old, found.plan)
        if not diff.changes:
            self._record("propose_change", title, "error: no change", diff.digest)
            return {"accepted": False, "why": "the proposal changes nothing", **judged}
        if broken:
            self._record(
                "propose_change",
                title,
                f"refused: {guards.breaks(broken)}",
                diff.digest,
            )
            return {
                "accepted": False,
                "why": f"refused: {guards.breaks(broken)}; only a person "
                "can make this change (edit, `tools plan approve`, deploy)",
                **judged,
            }
        where = self._write_proposal(current, inventory_toml, title, diff.digest)
        self._record("propose_change", title, "ok", diff.digest)
        return {"accepted": True, **where, **judged}

    def _write_proposal(
        self, current: str, proposed: str, title: str, digest: str
    ) -> dict[str, str]:
        name = f"{_slug(title)}-{digest[:8]}"
        top = self._git(["rev-parse", "--show-toplevel"])
        if top is not None:
            return {"branch": self._commit_branch(Path(top), name, proposed, title)}
        patch = self.root / ".homestack" / "proposals" / f"{name}.patch"
        patch.parent.mkdir(parents=True, exist_ok=True)
        rel = self.inventory.name
        patch.write_text(
            "".join(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    proposed.splitlines(keepends=True),
                    f"a/{rel}",
                    f"b/{rel}",
                )
            )
        )
        return {"patch": str(patch)}

    def _git(
        self,
        args: list[str],
        *,
        cwd: Path | None = None,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> str | None:
        result = self.runner.run(
            ["git", "-C", str(cwd or self.root), *args], check=False, input=input, env=env
        )
        return result.stdout.strip() if result.returncode == 0 else None

    def _commit_branch(self, top: Path, name: str, proposed: str, title: str) -> str:
        """Commit ``proposed`` on top of HEAD as branch proposals/NAME, through a private
        index: the working tree, the index and the checked-out branch stay as they are."""
        rel = self.inventory.relative_to(top.resolve()).as_posix()
        branch = f"proposals/{name}"
        with tempfile.TemporaryDirectory(prefix="homestack-index-") as tmp:
            env = {
                "GIT_INDEX_FILE": str(Path(tmp) / "index"),
                "GIT_AUTHOR_NAME": "tools mcp",
                "GIT_AUTHOR_EMAIL": "mcp@homestack.invalid",
                "GIT_COMMITTER_NAME": "tools mcp",
                "GIT_COMMITTER_EMAIL": "mcp@homestack.invalid",
            }
            blob = self._git(["hash-object", "-w", "--stdin"], cwd=top, input=proposed)
            head = self._git(["rev-parse", "--verify", "HEAD"], cwd=top)
            if blob is None or head is None:
                raise UserError(f"{top}: git could not store the proposal")
            staged = self._git(["read-tree", head], cwd=top, env=env) is not None and (
                self._git(
                    ["update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}"],
                    cwd=top,
                    env=env,
                )
                is not None
            )
            if not staged:
                raise UserError(f"{top}: git could not stage the proposal")
            tree = self._git(["write-tree"], cwd=top, env=env)
            message = f"Proposal: {title}\n\nWritten by `tools mcp` for review; not deployed.\n"
            commit = tree and self._git(
                ["commit-tree", tree, "-p", head, "-F", "-"], cwd=top, env=env, input=message
            )
            if not commit:
                raise UserError(f"{top}: git could not commit the proposal")
        made = self.runner.run(
            ["git", "-C", str(top), "update-ref", f"refs/heads/{branch}", commit, ""], check=False
        )
        if made.returncode != 0:
            raise UserError(f"{branch}: {error_line(made.stderr, 'git update-ref failed')}")
        return branch

    def validator(self, plan: dict[str, Any]) -> Callable[[], Sequence[str]]:
        """The secrets and certificates check deploy runs first (as `tools deploy` does)."""
        from homestack.deploy import cli as deploy_cli  # noqa: PLC0415

        return deploy_cli.validator(plan, self.inventory, lambda _machine, _message: None)

    def deploy_dry_run(self, machines: list[str]) -> dict[str, Any]:
        from homestack.deploy import engine  # noqa: PLC0415
        from homestack.deploy.steps import DeployOptions  # noqa: PLC0415

        plan = self.plan()
        verdict = guards.evaluate(self.inventory, plan, None)
        commands: list[str] = []
        report = engine.deploy(
            plan,
            runner=engine.DryRunRunner(commands.append),
            flake=self.root,
            selected=machines,
            options=DeployOptions(dry_run=True),
            validate=self.validator(plan),
        )
        return {
            "commands": commands,
            "report": report.to_json(),
            "guards": verdict.lines(),
            "diff": verdict.diff.to_json() if verdict.diff else None,
        }

    def deploy(self, approval_token: str, machines: list[str]) -> dict[str, Any]:
        """Deploy only what a person approved: the diff against what is deployed, exactly."""
        from homestack.deploy import engine  # noqa: PLC0415
        from homestack.deploy.steps import DeployOptions  # noqa: PLC0415

        plan = self.plan()
        verdict = guards.evaluate(self.inventory, plan, approval_token)
        if verdict.diff is None:
            self._record("deploy", " ".join(machines), "refused: no deploy recorded yet")
            raise UserError(
                "deploy: nothing was deployed with `tools deploy` yet; a person "
                "runs the first deploy"
            )
        if not verdict.approved:
            self._record(
                "deploy",
                " ".join(machines),
                "refused: no approval for this diff",
                verdict.diff.digest,
            )
            return {
                "deployed": False,
                "why": "the token does not approve this diff: a person reviews it and runs "
                f"`tools plan approve --against deployed --diff {verdict.diff.digest}`",
                "diff": verdict.diff.to_json(),
            }
        report = engine.deploy(
            plan,
            runner=self.runner,
            flake=self.root,
            selected=machines,
            options=DeployOptions(),
            validate=self.validator(plan),
        )
        if report.ok and not machines:
            guards.record_deployed(self.inventory, plan)
        self._record(
            "deploy", " ".join(machines), "ok" if report.ok else "failed", verdict.diff.digest
        )
        return {"deployed": report.ok, "report": report.to_json()}

    def _record(self, action: str, what: str, result: str, digest: str | None = None) -> None:
        auditlog.record(
            auditlog.log_path(self.inventory),
            ["mcp", action],
            [what] if what else [],
            result,
            diff=digest,
            via="mcp",
        )


def make_server(homelab: Homelab) -> Any:
    """The MCP server over ``homelab``: one tool per method, user errors as tool errors."""
    try:
        from mcp.server.mcpserver import MCPServer  # noqa: PLC0415
        from mcp.server.mcpserver.exceptions import ToolError  # noqa: PLC0415
    except ImportError:
        try:  # mcp 1.x (what an older nixpkgs packages) calls the same server FastMCP
            from mcp.server.fastmcp import (  # type: ignore[attr-defined,no-redef]  # noqa: PLC0415
                FastMCP as MCPServer,
            )
            from mcp.server.fastmcp.exceptions import (  # type: ignore[no-redef]  # noqa: PLC0415
                ToolError,
            )
        except ImportError as exc:
            raise UserError(
                "tools mcp: the `mcp` package is missing (pip install 'homestack-tools[agents]')"
            ) from exc

    server = MCPServer("homestack", instructions=INSTRUCTIONS)

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # the SDK reads the parameters and their types from fn
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except UserError as exc:  # a problem the agent can act on: say it
                raise ToolError(str(exc)) from exc

        server.add_tool(guarded, name=fn.__name__, description=fn.__doc__)
        return fn

    @tool
    def explain() -> dict[str, Any]:
        """The whole architecture: machines, public entries, routes, flows, state, secrets
        (who can decrypt which file, never a value), deploy order."""
        return homelab.explain()

    @tool
    def plan(section: str | None = None) -> dict[str, Any]:
        """The plan lib/ computes from the inventory. Without a section: everything but the
        rendered artifacts; with one (e.g. "allow", "artifacts"): that section."""
        return homelab.plan_section(section)

    @tool
    def read_inventory() -> dict[str, Any]:
        """The inventory.toml text (it holds public keys only), to base a proposal on."""
        return homelab.read_inventory()

    @tool
    def diff(against: str = "HEAD") -> dict[str, Any]:
        """What the inventory changes compared with `against` (a git revision, an inventory
        file, or "deployed"): each change with its risk class, and the guards it breaks."""
        return homelab.diff(against)

    @tool
    def list_guards() -> list[dict[str, Any]]:
        """The guards a deploy checks (built-in and policy.toml)."""
        return homelab.guards()

    @tool
    def secrets_check() -> dict[str, Any]:
        """Audit every secret file against the inventory from its sops metadata (recipients,
        keys, MAC presence); nothing is decrypted."""
        return homelab.secrets_check()

    @tool
    def certs_check() -> dict[str, Any]:
        """Check the certificates the plan needs: present, chained, covering, not expiring."""
        return homelab.certs_check()

    @tool
    def deploy_status(machines: list[str] | None = None) -> list[dict[str, Any]]:
        """What each machine runs (asked over ssh), and its GitOps state."""
        return homelab.deploy_status(machines or [])

    @tool
    def lab(run_tests: bool = False) -> dict[str, Any]:
        """The lab's processes; with run_tests, run its checks (needs `tools lab up`)."""
        return homelab.lab(run_tests)

    @tool
    def audit_log(limit: int = 50) -> list[dict[str, Any]]:
        """The last `limit` entries of the audit log of mutating commands."""
        return homelab.audit_log(limit)

    @tool
    def propose_change(inventory_toml: str, title: str) -> dict[str, Any]:
        """Propose a whole new inventory.toml. lib/ validates it, it is diffed and checked
        against the guards; when it passes, it is committed to a branch proposals/… (or
        written as a patch) for a person to review. The inventory itself is never changed.
        A change that breaks a guard is refused."""
        return homelab.propose(inventory_toml, title)

    @tool
    def deploy_dry_run(machines: list[str] | None = None) -> dict[str, Any]:
        """The commands a deploy would run, in order, and what the guards say; runs nothing."""
        return homelab.deploy_dry_run(machines or [])

    @tool
    def deploy(approval_token: str, machines: list[str] | None = None) -> dict[str, Any]:
        """Deploy, only with the token a person printed with `tools plan approve` for exactly
        the current diff against what is deployed."""
        return homelab.deploy(approval_token, machines or [])

    return server


@click.command("mcp")
@inventory_option
def mcp(inventory_path: Path | None) -> None:
    """Serve the Model Context Protocol on stdin/stdout for an agent (see docs/agents.md).

    Agents read the plan, diffs and checks, and propose inventory changes to a branch;
    deploying needs a token from `tools plan approve`. No tool returns a secret value.
    """
    path = find_inventory(inventory_path)
    if not path.is_file():
        raise UserError(f"{path}: no such inventory file")
    os.environ.setdefault("HOMESTACK_INVENTORY", str(path.resolve()))
    make_server(Homelab(path)).run("stdio")
