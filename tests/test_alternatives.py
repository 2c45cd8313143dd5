"""The alternatives (docs/alternatives.md): Headscale with Tailscale clients as the mesh,
Traefik as the ingress, chosen by the services the inventory's guests name and rendered from
the same plan. The fixtures are the example switched to each (tests/inventories/alternatives/).

Golden files: HOMESTACK_UPDATE_GOLDEN=1 rewrites tests/golden/alternatives/."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import EXAMPLE, REPO, nix_eval, requires_nix

from homestack.plan import load_plan

pytestmark = requires_nix

FIXTURES = REPO / "tests" / "inventories" / "alternatives"
GOLDEN = REPO / "tests" / "golden" / "alternatives"
SCHEMAS = REPO / "tests" / "data" / "traefik"


def nix_error(expr: str) -> str:
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    return result.stderr


@pytest.fixture(scope="module")
def headscale() -> dict[str, Any]:
    return load_plan(FIXTURES / "headscale.toml")


@pytest.fixture(scope="module")
def traefik() -> dict[str, Any]:
    return load_plan(FIXTURES / "traefik.toml")


@pytest.fixture(scope="module")
def traefik_acme() -> dict[str, Any]:
    return load_plan(FIXTURES / "traefik-acme.toml")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HOMESTACK_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs (HOMESTACK_UPDATE_GOLDEN=1 rewrites it)"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def hujson_body(policy: str) -> Any:
    """The policy file without its // comment lines (the JSON body lib writes)."""
    return json.loads("\n".join(x for x in policy.splitlines() if not x.startswith("//")))


# --- the choice ---------------------------------------------------------------------------


def test_the_example_keeps_netbird_and_caddy(example_plan: dict[str, Any]) -> None:
    assert example_plan["ingress"] == "caddy"
    assert example_plan["mesh"]["server"] == "netbird-server"
    assert example_plan["mesh"]["client"] == "netbird"
    assert example_plan["artifacts"]["traefik"] is None
    assert example_plan["artifacts"]["headscale"] is None
    assert example_plan["artifacts"]["caddyfile"].startswith("# Rendered by Homestack")


def test_headscale_brings_the_tailscale_client_to_the_hosts(headscale: dict[str, Any]) -> None:
    mesh = headscale["mesh"]
    assert (mesh["server"], mesh["client"], mesh["guest"]) == ("headscale", "tailscale", "vpn")
    assert (mesh["interface"], mesh["port"]) == ("ts-homestack", 41641)
    # The hosts' input chain follows: Tailscale's WireGuard on the LAN, SSH on its interface.
    homelab = {
        (r["from"], r["port"], r["proto"]) for r in headscale["input"] if r["host"] == "homelab"
    }
    assert ("lan", 41641, "udp") in homelab
    assert ("lan", 51821, "udp") not in homelab
    assert ("mesh", 22, "tcp") in homelab
    table = headscale["artifacts"]["hostNftables"]["homelab"]
    assert '"ts-homestack"' in table
    assert "nb-homestack" not in table
    # The hypervisor's sops file holds the pre-auth key instead of NetBird's setup key.
    keys = headscale["secrets"]["secrets/homelab.yaml"]["keys"]
    assert "headscale/preauth-key" in keys
    assert "netbird/setup-key" not in keys
    assert headscale["secrets"]["secrets/vpn.yaml"]["keys"] == ["headscale/oidc-client-secret"]


def test_traefik_takes_the_proxy_and_its_secrets(
    traefik: dict[str, Any], traefik_acme: dict[str, Any]
) -> None:
    assert traefik["ingress"] == "traefik"
    assert traefik["proxy"] == "proxy"
    assert traefik["artifacts"]["caddyfile"] == ""
    assert "tls/key" in traefik["secrets"]["secrets/proxy.yaml"]["keys"]
    assert "cloudflare/api-token" in traefik_acme["secrets"]["secrets/proxy.yaml"]["keys"]
    # acme-dns01 opens the same egress for Traefik as for Caddy.
    reasons = {e["reason"] for e in traefik_acme["egress"] if e["from"] == "proxy"}
    assert "ACME and the Cloudflare API (acme-dns01)" in reasons
    # Routes still resolve to the proxy and the flows to the upstreams are the same.
    assert {d["name"] for d in traefik["dns"] if d["kind"] == "route"} == {
        "id.home.arpa", "vpn.home.arpa",
    }  # fmt: skip


def test_the_same_flows_whichever_ingress(
    example_plan: dict[str, Any], traefik: dict[str, Any]
) -> None:
    def flows(plan: dict[str, Any]) -> set[tuple[str, str, int, str]]:
        return {(f["from"], f["to"], f["port"], f["proto"]) for f in plan["allow"]}

    assert flows(example_plan) == flows(traefik)


def plan_errors(inventory: dict[str, Any]) -> list[str]:
    text = tomli_w.dumps(inventory)
    result: list[str] = nix_eval(f"(import ./lib).errorsOf (builtins.fromTOML {json.dumps(text)})")
    return result


def test_a_netbird_server_beside_headscale_is_refused() -> None:
    inv = tomllib.loads((FIXTURES / "headscale.toml").read_text())
    inv["guests"]["db"]["services"] = ["postgresql", "netbird-server"]
    errors = plan_errors(inv)
    assert (
        "guests.vpn.services: headscale is a second mesh server (guests.db runs netbird-server): "
        "the stack has one mesh server; choose headscale, netbird-server"
    ) in errors


def test_both_ingresses_on_one_guest_clash_on_their_ports() -> None:
    inv = tomllib.loads(EXAMPLE.read_text())
    inv["guests"]["proxy"]["services"] = ["caddy", "traefik", "dnsmasq"]
    errors = plan_errors(inv)
    assert (
        "guests.proxy.services: port 443/tcp is bound by both caddy (https) and "
        "traefik (https) on proxy" in errors
    )


# --- Headscale --------------------------------------------------------------------------


def test_headscale_golden(headscale: dict[str, Any]) -> None:
    golden("headscale-config.json", pretty(headscale["artifacts"]["headscale"]["config"]))
    golden("headscale-policy.hujson", headscale["artifacts"]["headscale"]["policy"])


def test_headscale_config_follows_the_plan(headscale: dict[str, Any]) -> None:
    config = headscale["artifacts"]["headscale"]["config"]
    vpn = headscale["guests"]["vpn"]
    route = next(r for r in headscale["routes"] if r["guest"] == "vpn")
    issuer = next(r for r in headscale["routes"] if r["guest"] == "auth")
    assert config["server_url"] == f"https://{route['fqdn']}"
    # The proxy's upstream for the route is exactly where Headscale listens.
    assert config["listen_addr"] == route["upstream"] == f"{vpn['address']}:8080"
    assert config["oidc"]["issuer"] == f"https://{issuer['fqdn']}"
    # MagicDNS: a base domain that neither is nor contains the server's name.
    base = config["dns"]["base_domain"]
    host = route["fqdn"]
    assert base != host
    assert not host.endswith("." + base)
    assert config["dns"]["search_domains"] == [headscale["domain"]]
    assert config["dns"]["nameservers"]["split"] == {headscale["domain"]: headscale["dnsServers"]}
    # The embedded DERP's STUN port is the one the relay forwards to this guest.
    stun = int(config["derp"]["server"]["stun_listen_addr"].rsplit(":", 1)[1])
    forwards = {(f["guest"], f["port"], f["proto"]) for f in headscale["relay"]["forwards"]}
    assert ("vpn", stun, "udp") in forwards
    assert config["derp"]["server"]["ipv4"] == headscale["relay"]["publicAddress"]
    # The only loopback listener is the metrics server, as the catalogue says; remote gRPC
    # stays off (it needs TLS on Headscale or grpc_allow_insecure).
    loopback = {p["port"] for p in vpn["listening"] if p["scope"] == "loopback"}
    assert {int(config["metrics_listen_addr"].rsplit(":", 1)[1])} == loopback
    assert config["grpc_allow_insecure"] is False
    assert config["tls_cert_path"] is None
    assert config["database"]["type"] == "sqlite"
    assert config["database"]["sqlite"]["path"].startswith(vpn["persist"][0] + "/")


def expand_policy(policy: Any, tags_of: dict[str, str]) -> set[tuple[str, str, int, str]]:
    """Every (user, host, port, proto) the ACL policy accepts, expanding groups and tags
    (each host carries the tag its pre-auth key gives it, `tags_of`)."""
    hosts_with = {tag: [h for h, t in tags_of.items() if t == tag] for tag in tags_of.values()}
    allowed = set()
    for acl in policy["acls"]:
        assert acl["action"] == "accept"
        users: list[str] = []
        for src in acl["src"]:
            members = policy["groups"][src] if src.startswith("group:") else [src]
            users += [m.removesuffix("@") for m in members]
        for dst in acl["dst"]:
            target, port = dst.rsplit(":", 1)
            for host in hosts_with.get(target, []):
                for user in users:
                    allowed.add((user, host, int(port), acl["proto"]))
    return allowed


def matrix_for_mesh_clients(plan: dict[str, Any]) -> set[tuple[str, str, int, str]]:
    """What the allow matrix lets mesh clients reach: the hosts' input rules from the mesh,
    for the admins (the only users whose keys log in)."""
    return {
        (admin, r["host"], r["port"], r["proto"])
        for r in plan["input"]
        if r["from"] == "mesh"
        for admin in plan["admins"]
    }


def tags_of(plan: dict[str, Any]) -> dict[str, str]:
    """The tag each host running the Tailscale client (the hypervisors) joins with."""
    return {
        h: nix_eval(f'(import ./lib/render/headscale.nix).hostTag "{h}"')
        for h, host in plan["hosts"].items()
        if host["role"] == "hypervisor"
    }


def test_acl_policy_allows_exactly_the_allow_matrix(headscale: dict[str, Any]) -> None:
    policy = hujson_body(headscale["artifacts"]["headscale"]["policy"])
    accepted = expand_policy(policy, tags_of(headscale))
    expected = matrix_for_mesh_clients(headscale)
    assert expected == {("alice", "homelab", 22, "tcp")}
    assert accepted == expected
    # bob is a user but no admin: the policy names him nowhere, so he reaches nothing.
    assert "bob" in headscale["users"]
    assert not any(u == "bob" for u, *_ in accepted)
    # Every tag a host's key carries has owners (Headscale refuses an unowned tag).
    assert set(tags_of(headscale).values()) <= set(policy["tagOwners"])


def test_acl_policy_follows_a_changed_matrix(tmp_path: Path) -> None:
    """A second admin and a second hypervisor-side rule show up in the policy."""
    inv = tomllib.loads((FIXTURES / "headscale.toml").read_text())
    inv["users"]["bob"]["admin"] = True
    inv["users"]["bob"]["ssh_keys"] = copy.deepcopy(inv["users"]["alice"]["ssh_keys"])
    path = tmp_path / "inventory.toml"
    path.write_text(tomli_w.dumps(inv))
    plan = load_plan(path)
    policy = hujson_body(plan["artifacts"]["headscale"]["policy"])
    accepted = expand_policy(policy, tags_of(plan))
    assert accepted == matrix_for_mesh_clients(plan) == {
        ("alice", "homelab", 22, "tcp"), ("bob", "homelab", 22, "tcp"),
    }  # fmt: skip


# --- Traefik ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["traefik", "traefik-acme"])
def test_traefik_golden(name: str) -> None:
    plan = load_plan(FIXTURES / f"{name}.toml")
    golden(f"{name}-static.json", pretty(plan["artifacts"]["traefik"]["static"]))
    golden(f"{name}-dynamic.json", pretty(plan["artifacts"]["traefik"]["dynamic"]))


def validator(schema: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    document = json.loads((SCHEMAS / schema).read_text())
    cls = jsonschema.validators.validator_for(document)
    cls.check_schema(document)
    return cls(document)


@pytest.mark.parametrize("name", ["traefik", "traefik-acme"])
def test_traefik_config_passes_the_schemas(name: str) -> None:
    rendered = load_plan(FIXTURES / f"{name}.toml")["artifacts"]["traefik"]
    dynamic = validator("traefik-v3-file-provider.json")
    static = validator("traefik-v3.json")
    assert [e.message for e in dynamic.iter_errors(rendered["dynamic"])] == []
    assert [e.message for e in static.iter_errors(rendered["static"])] == []


def test_the_schema_catches_a_misspelt_key(traefik: dict[str, Any]) -> None:
    """The schema is strict enough to matter: a wrong key or type in a router is caught."""
    dynamic = copy.deepcopy(traefik["artifacts"]["traefik"]["dynamic"])
    router = next(iter(dynamic["http"]["routers"].values()))
    router["entrypoints"] = router.pop("entryPoints")
    errors = list(validator("traefik-v3-file-provider.json").iter_errors(dynamic))
    assert errors, "a misspelt router key passed the schema"


def problems(config: dict[str, Any]) -> list[str]:
    expr = f"(import ./lib).traefikProblems (builtins.fromJSON {json.dumps(json.dumps(config))})"
    result: list[str] = nix_eval(expr)
    return result


@pytest.mark.parametrize("name", ["traefik", "traefik-acme"])
def test_every_router_names_what_exists(name: str) -> None:
    rendered = load_plan(FIXTURES / f"{name}.toml")["artifacts"]["traefik"]
    assert problems(rendered) == []
    # And the check looks at every router: each one is there.
    assert len(rendered["dynamic"]["http"]["routers"]) == 6


def test_a_planted_broken_router_is_caught(
    traefik: dict[str, Any], traefik_acme: dict[str, Any]
) -> None:
    broken = copy.deepcopy(traefik["artifacts"]["traefik"])
    routers = broken["dynamic"]["http"]["routers"]
    routers["planted"] = {
        "rule": "Host(`x.home.arpa`)",
        "entryPoints": ["websecure", "webz"],
        "service": "nowhere",
        "tls": {"certResolver": "letsencrypt", "options": "modern"},
    }
    broken["dynamic"]["tls"]["certificates"][0]["stores"] = ["default", "other"]
    # The schema has nothing against it: only the consistency check can see it.
    assert list(validator("traefik-v3-file-provider.json").iter_errors(broken["dynamic"])) == []
    assert problems(broken) == [
        'traefik: http.routers.planted.service: "nowhere" is not a service of http.services',
        'traefik: http.routers.planted.entryPoints: "webz" is not an entry point of the static '
        "configuration (web, websecure)",
        'traefik: http.routers.planted.tls.certResolver: "letsencrypt" is not a '
        "certificatesResolvers entry of the static configuration",
        'traefik: http.routers.planted.tls.options: "modern" is not in tls.options',
        'traefik: tls.certificates: store "other" is not in tls.stores',
    ]
    # A service with no usable server URL is named too.
    acme = copy.deepcopy(traefik_acme["artifacts"]["traefik"])
    first = next(iter(acme["dynamic"]["http"]["services"]))
    acme["dynamic"]["http"]["services"][first]["loadBalancer"]["servers"] = [{"url": "tcp://x:1"}]
    assert problems(acme) == [
        f'traefik: http.services.{first}.loadBalancer.servers: "tcp://x:1" is not an http://, '
        "https:// or h2c:// URL"
    ]


def test_traefik_routes_keep_paths_h2c_and_priority(traefik: dict[str, Any]) -> None:
    dynamic = traefik["artifacts"]["traefik"]["dynamic"]["http"]
    by_rule = {r["rule"]: dynamic["services"][r["service"]] for r in dynamic["routers"].values()}
    grpc = by_rule["Host(`vpn.home.arpa`) && PathPrefix(`/signalexchange.SignalExchange/`)"]
    assert grpc["loadBalancer"]["servers"] == [{"url": "h2c://192.168.100.11:10000"}]
    relay = by_rule["Host(`vpn.home.arpa`) && PathPrefix(`/relay`)"]
    assert relay["loadBalancer"]["servers"] == [{"url": "http://192.168.100.11:33080"}]
    dashboard = by_rule["Host(`vpn.home.arpa`)"]
    assert dashboard["loadBalancer"]["servers"] == [{"url": "http://192.168.100.11:8080"}]
    # Each route of the plan is one router, whatever its path.
    assert len(dynamic["routers"]) == len(traefik["routes"])


def test_a_path_traefik_cannot_express_is_refused() -> None:
    inv = tomllib.loads((FIXTURES / "traefik.toml").read_text())
    inv["guests"]["auth"]["routes"] = [{"name": "id", "port": 1411, "path": "/a*/b"}]
    text = tomli_w.dumps(inv)
    err = nix_error(
        f"((import ./lib).mkPlanFromAttrs (builtins.fromTOML {json.dumps(text)})).artifacts.traefik"
    )
    assert 'route "id.home.arpa" path "/a*/b": has a wildcard before its end' in err


# --- the NixOS layer ----------------------------------------------------------------------

SHAPE = REPO.parent / "shared" / "tools" / "nixos-shape" / "run"


# nixos-shape is a development tool beside this repository (../shared), not part of the
# product: the test exists only where the tool does, so a fork's CI neither runs nor skips it.
if SHAPE.exists():

    @pytest.mark.parametrize("name", ["headscale", "traefik", "traefik-acme"])
    def test_nixos_shape_is_clean_on_the_fixture(name: str) -> None:
        """scripts/shape-fixture: every machine of the example switched to the alternative
        evaluates with the real module system, every option it sets declared."""
        machines = ["vpn", "proxy", "homelab"]
        result = subprocess.run(
            [str(REPO / "scripts" / "shape-fixture"), str(FIXTURES / f"{name}.toml"), *machines],
            capture_output=True, text=True, check=False, env={**os.environ, "SHAPE_QUICK": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        for machine in ("vpn", "proxy", "homelab"):
            assert (
                f"{machine}: ok - 0 unknown option names, 0 values rejected, 0 assertions false"
                in result.stdout
            )


def test_a_hostile_route_cannot_add_to_a_traefik_rule() -> None:
    """Rendering is safe on its own: a backtick would end the rule's literal and let the
    rest become a matcher of its own (Host(`x`) || ...), so lib refuses it even when
    validation is bypassed."""
    expr = (
        "let p = (import ./lib).mkPlan ./tests/inventories/alternatives/traefik.toml;"
        " r = builtins.head p.routes;"
        ' bad = r // { path = "/a`) || PathPrefix(`/"; };'
        " in (import ./lib/render/traefik.nix).render (p // { routes = [ bad ]; })"
    )
    err = nix_error(expr)
    assert "not a name or path Traefik's rule syntax can hold" in err
