"""The NixOS layer (flake.nix, modules/, hosts/, guests/, tests/nixos/), checked without nixpkgs.

What these tests prove:
- Every `.nix` file of the repository parses (`nix-instantiate --parse`).
- Option paths: every NixOS option path that Homestack's own modules set, for every machine
  of the example plan (with the module lists `modules/machines.nix` gives it) and for every
  node of the NixOS VM tests in tests/nixos/, exists in the option manifest
  (`tests/reference/nixos-options.json`, the declared options of the pinned nixpkgs,
  microvm.nix and sops-nix; `<name>` = any attribute key,
  `*` = any list element, `freeform` = any key below) or in `tests/nixos-extra-options.json`
  (options confirmed in the nixpkgs source the manifest lacks), or is declared by our own
  modules (`homestack.*`). The plan's rendered artifacts reach NixOS only through these
  paths, so they are covered too. Paths declared in only one of the two known layouts of a
  nixpkgs module ("variant", NetBird's server) and renamed/removed paths fail as well.
  Both branches of every `mkIf` are collected (conditions are not evaluated).
- The check is not vacuous: a planted made-up path, a variant-only path and a renamed path
  each make it fail, and known paths behind mkIf/mkMerge/mkForce are found.
- Zero application services on bare metal: no host (role hypervisor or relay) sets an option
  of a guest service module (pocket-id, netbird server, caddy, dnsmasq, postgresql) or
  loads one of those modules; a planted one is found.
- Every sops secret a module reads is listed in the plan's `secrets.<file>.keys` (lib/
  secrets.nix), the one list `tools` reads, in the file the module reads it from.
- The NixOS VM tests' fixtures are usable: every fixture sops file decrypts, with the real
  sops, under the age identity derived from the SSH host key (tests/keys/) of every machine
  the plan lets decrypt it, as sops-nix does on the machine; and the test CA signs the
  wildcard leaf whose key is in the proxy's fixture.
- flake.lock holds exactly the reference nodes.

What they cannot prove: option *values* and their types (nixos-shape and, finally, a real
`nix flake check` do that), options set by foreign modules (microvm.nix, sops-nix, nixpkgs),
anything the manifest itself got wrong, and that the systems build or boot (the NixOS VM
tests in tests/nixos/ need a machine with Nix and KVM). `lib`, `pkgs` and the `config`
values the modules read are stand-ins (tests/nixos/option-paths/), so a module that reads a
`config` value the stand-in lacks fails here although NixOS would have it. The stand-in `options`
is empty, so where a module picks a nixpkgs layout by looking at `options` (the NetBird server's
store and GeoLite switch), only the older layout's branch is checked here; nixos-shape, whose
manifest declares both layouts, evaluates the newer one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE, REFERENCE, REPO, requires_nix

from homestack.process import Runner
from homestack.secrets.agekeys import ssh_private_to_identity
from homestack.secrets.sops import find_sops

pytestmark = requires_nix

MANIFEST = REFERENCE / "nixos-options.json"
EXTRAS = REPO / "tests" / "nixos-extra-options.json"
COLLECT = REPO / "tests" / "nixos" / "option-paths" / "collect.nix"
FIXTURES = REPO / "tests" / "nixos" / "fixtures"

RUNNER = Runner()


def nix_files() -> list[Path]:
    skip = {".git", "node_modules", ".venv", "result"}
    return sorted(
        p for p in REPO.rglob("*.nix") if not skip.intersection(p.relative_to(REPO).parts)
    )


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_nix_file_parses(path: Path) -> None:
    result = RUNNER.run(["nix-instantiate", "--parse", str(path)], check=False)
    assert result.returncode == 0, result.stderr


def collect(plant: Path | None = None, inventory: Path = EXAMPLE) -> dict[str, Any]:
    """Run the collector; returns {paths: [{machine, path, status, file}], secrets: [...]}."""
    args = [
        "nix-instantiate",
        "--eval",
        "--strict",
        "--json",
        str(COLLECT),
        "--arg",
        "root",
        str(REPO),
        "--arg",
        "inventory",
        str(inventory),
        "--arg",
        "manifest",
        str(MANIFEST),
        "--arg",
        "extras",
        str(EXTRAS),
    ]
    if plant is not None:
        args += ["--arg", "plant", str(plant)]
    result = RUNNER.run(args, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def problems(paths: list[dict[str, Any]]) -> list[str]:
    return sorted(
        {
            f"{p['machine']}: {'.'.join(p['path'])} ({p['status']}, set in {p['file']})"
            for p in paths
            if p["status"] != "ok"
        }
    )


@pytest.fixture(scope="module")
def collected() -> dict[str, Any]:
    return collect()


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    result = RUNNER.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            str(REPO / "lib" / "eval.nix"),
            "--argstr",
            "inventory",
            str(EXAMPLE),
        ],
        check=True,
        timeout=120,
    )
    data: dict[str, Any] = json.loads(result.stdout)["plan"]
    return data


def test_every_option_path_exists(collected: dict[str, Any]) -> None:
    assert problems(collected["paths"]) == []


def test_collector_sees_through_mk_helpers(collected: dict[str, Any]) -> None:
    found = {(p["machine"], ".".join(p["path"])) for p in collected["paths"]}
    expected = {
        ("db", "services.postgresql.authentication"),  # mkForce
        ("db", "services.postgresql.settings"),  # freeform: stops there
        ("homelab", "microvm.vms.db.restartIfChanged"),  # attrsOf submodule
        ("homelab", "systemd.services.homestack-host-key-db.requiredBy"),
        ("proxy", "services.dnsmasq.settings"),
        ("proxy", "environment.etc.homestack/tls/wildcard.crt.source"),  # mkIf
        ("auth", "microvm.shares.*.proto"),  # list of submodules
        ("auth", "fileSystems./persist.neededForBoot"),  # mkMerge of a list
        ("cloud-relay", "networking.nftables.ruleset"),
        ("vpn", "services.netbird.server.management.settings"),
        ("homelab", "sops.secrets.netbird/setup-key"),  # an empty submodule value
    }
    assert expected <= found, sorted(expected - found)
    machines = {p["machine"] for p in collected["paths"]}
    assert {"homelab", "cloud-relay", "auth", "vpn", "proxy", "db"} <= machines
    # the NixOS VM tests' nodes are checked too, as "<test>/<node>"
    assert {"guests/auth", "guests/client", "relay/cloud-relay", "hypervisor/homelab"} <= machines


def plant(tmp_path: Path, body: str) -> Path:
    module = tmp_path / "planted.nix"
    module.write_text("{ ... }: {\n" + body + "\n}\n")
    return module


def test_planted_made_up_paths_fail(tmp_path: Path) -> None:
    bad = problems(
        collect(
            plant(
                tmp_path,
                """
      services.caddy.virtualHostz."x".extraConfig = "";
      networking.firewall.allowedTCPPortz = [ 1 ];
      microvm.sharez = [ ];
    """,
            )
        )["paths"]
    )
    for path in (
        "services.caddy.virtualHostz",
        "networking.firewall.allowedTCPPortz",
        "microvm.sharez",
    ):
        assert any(f": {path} (unknown" in line for line in bad), (path, bad)


def test_planted_variant_and_renamed_paths_fail(tmp_path: Path) -> None:
    bad = problems(
        collect(
            plant(
                tmp_path,
                """
      services.netbird.server.ingress.nginx.enable = true;
      security.acme.certs."x".credentialsFile = "/dev/null";
    """,
            )
        )["paths"]
    )
    assert any("services.netbird.server.ingress.nginx.enable (variant" in b for b in bad), bad
    assert any("security.acme.certs.x.credentialsFile (renamed" in b for b in bad), bad


def test_extra_options_are_sourced_and_not_in_the_manifest() -> None:
    manifest = json.loads(MANIFEST.read_text())
    extras = json.loads(EXTRAS.read_text())
    entries = {
        **extras.get("_notForNixosShape", {}),
        **{k: v for k, v in extras.items() if not k.startswith("_")},
    }
    assert entries
    for path, entry in entries.items():
        assert path not in manifest, f"{path} is already in the manifest"
        assert entry.get("file", "").startswith("nixos/"), path
        assert entry.get("read"), f"{path}: say how the nixpkgs source was read"


def test_secret_names_are_listed_in_the_plan(
    collected: dict[str, Any], plan: dict[str, Any]
) -> None:
    files = plan["secrets"]
    machines = {**plan["hosts"], **plan["guests"]}
    root = collected["root"] + "/"
    assert collected["secrets"]
    for s in collected["secrets"]:
        own = machines[s["machine"]].get("secretsFile", f"secrets/{s['machine']}.yaml")
        file = s["sopsFile"].removeprefix(root) if s["sopsFile"] else own
        key = s["key"] or s["name"]
        assert file in files, f"{s['machine']}: {s['name']} reads {file}, unknown to the plan"
        assert key in files[file]["keys"], f"{s['machine']}: {file} [{key}] not in the plan's keys"


# The service modules of lib/services.nix, and the NixOS options that are that service.
# Bare metal runs none of them: application services live in guests (docs/nixos.md).
GUEST_SERVICES = {
    "pocket-id": ("services", "pocket-id"),
    "netbird-server": ("services", "netbird", "server"),
    "caddy": ("services", "caddy"),
    "dnsmasq": ("services", "dnsmasq"),
    "postgresql": ("services", "postgresql"),
    "headscale": ("services", "headscale"),
    "traefik": ("services", "traefik"),
}


def services_on_hosts(collected: dict[str, Any], hosts: list[str]) -> list[str]:
    """Every option path of a guest service, or module file of one, set on a host."""
    modules = {str(REPO / "modules" / "services" / f"{name}.nix") for name in GUEST_SERVICES}
    found = set()
    for p in collected["paths"]:
        if p["machine"] not in hosts:
            continue
        path = tuple(p["path"])
        for name, prefix in GUEST_SERVICES.items():
            if path[: len(prefix)] == prefix:
                found.add(f"{p['machine']}: {'.'.join(path)} ({name}, set in {p['file']})")
        if p["file"] in modules:
            found.add(f"{p['machine']}: {'.'.join(path)} (set in {p['file']})")
    return sorted(found)


def test_the_service_list_is_lib_s() -> None:
    result = RUNNER.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            "--expr",
            f"builtins.attrNames (import {REPO / 'lib'}).services",
        ],
        check=True,
    )
    assert sorted(GUEST_SERVICES) == json.loads(result.stdout)
    for name in GUEST_SERVICES:
        assert (REPO / "modules" / "services" / f"{name}.nix").is_file(), name


def test_hosts_run_no_application_service(collected: dict[str, Any], plan: dict[str, Any]) -> None:
    hosts = sorted(plan["hosts"])
    assert {h["role"] for h in plan["hosts"].values()} == {"hypervisor", "relay"}
    assert {p["machine"] for p in collected["paths"]} >= set(hosts)
    assert services_on_hosts(collected, hosts) == []
    # the check can see a guest's services: every guest module's paths are collected too
    guests = services_on_hosts(collected, sorted(plan["guests"]))
    assert any(": services.caddy." in line for line in guests), guests


def test_a_service_planted_on_the_hosts_is_found(tmp_path: Path, plan: dict[str, Any]) -> None:
    found = services_on_hosts(
        collect(
            plant(
                tmp_path,
                """
      services.caddy.virtualHosts."x".extraConfig = "";
      services.netbird.server.enable = true;
      services.postgresql = { enable = true; };
    """,
            )
        ),
        sorted(plan["hosts"]),
    )
    for host in plan["hosts"]:
        for path in (
            "services.caddy.virtualHosts.x.extraConfig",
            "services.netbird.server.enable",
            "services.postgresql.enable",
        ):
            assert any(line.startswith(f"{host}: {path} (") for line in found), (host, path, found)


def test_a_service_module_imported_by_a_host_is_found() -> None:
    # A service module cannot be evaluated on a host (it reads the guest's plan entry), so
    # the collector's view of such an import is written out here.
    module = str(REPO / "modules" / "services" / "dnsmasq.nix")
    collected = {"paths": [
        {"machine": "homelab", "path": ["systemd", "services", "x", "after"], "file": module},
        {"machine": "proxy", "path": ["services", "dnsmasq", "enable"], "file": module},
    ]}  # fmt: skip
    assert services_on_hosts(collected, ["homelab"]) == [
        f"homelab: systemd.services.x.after (set in {module})"
    ]


def decrypt(file: Path, machine: str) -> str:
    identity = ssh_private_to_identity((REPO / "tests" / "keys" / f"host_{machine}").read_bytes())
    result = RUNNER.run(
        [find_sops(), "--decrypt", str(file)],
        check=False,
        cwd=file.parent,
        env={
            "SOPS_AGE_KEY": str(identity),
            "SOPS_DISABLE_VERSION_CHECK": "1",
            "SOPS_AGE_KEY_FILE": "/nonexistent",
        },
    )
    assert result.returncode == 0, f"{machine} cannot decrypt {file}: {result.stderr}"
    return result.stdout


def test_fixture_secrets_decrypt_with_the_machines_host_keys(plan: dict[str, Any]) -> None:
    fixtures = sorted((FIXTURES / "secrets").rglob("*.yaml"))
    assert fixtures
    for file in fixtures:
        relative = str(file.relative_to(FIXTURES))
        assert relative in plan["secrets"], f"{relative}: not a sops file of the plan"
        entry = plan["secrets"][relative]
        assert entry["machines"], relative
        for machine in entry["machines"]:
            text = decrypt(file, machine)
            for key in entry["keys"]:
                top = key.split("/")[0]
                assert f"{top}:" in text, f"{relative}: no {key}"


def test_fixture_certificate_matches_the_proxy_key(tmp_path: Path) -> None:
    certs = FIXTURES / "certs"
    RUNNER.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "wildcard.crt")],
        check=True,
    )
    run = RUNNER.run(
        [
            find_sops(),
            "--decrypt",
            "--extract",
            '["tls"]["key"]',
            str(FIXTURES / "secrets" / "proxy.yaml"),
        ],
        check=True,
        cwd=FIXTURES,
        env={
            "SOPS_AGE_KEY": str(
                ssh_private_to_identity((REPO / "tests" / "keys" / "host_proxy").read_bytes())
            ),
            "SOPS_AGE_KEY_FILE": "/nonexistent",
        },
    )
    key = tmp_path / "key.pem"
    key.write_text(run.stdout)
    from_key = RUNNER.run(["openssl", "pkey", "-in", str(key), "-pubout"], check=True).stdout
    from_cert = RUNNER.run(
        ["openssl", "x509", "-in", str(certs / "wildcard.crt"), "-noout", "-pubkey"], check=True
    ).stdout
    assert from_key == from_cert


def test_flake_lock_is_the_reference() -> None:
    """The option manifest describes these pins: a new lock needs a new manifest."""
    reference = REFERENCE / "flake.lock.json"
    ours = json.loads((REPO / "flake.lock").read_text())
    assert ours == json.loads(reference.read_text())
