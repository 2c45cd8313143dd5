"""`tools explain`: the whole architecture, described from the inventory and its plan.

One model (`describe`) feeds three renderings: Markdown for people, JSON for programs,
and Graphviz DOT for the topology picture.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from homestack.cliopts import inventory_option
from homestack.inventory import find_inventory
from homestack.plan import load_plan


def _ports(flows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{f['port']}/{f['proto']}" for f in flows)


def describe(plan: dict[str, Any]) -> dict[str, Any]:
    """A self-contained description of the system: machines, services, flows, state, secrets."""
    machines: list[dict[str, Any]] = []
    for name, host in sorted(plan["hosts"].items()):
        machines.append(
            {
                "name": name,
                "kind": "host",
                "role": host["role"],
                "engine": host.get("engine"),
                "system": host["system"],
                "reach": host["target"],
                "publicAddress": host["publicAddress"],
                "guests": host["guests"],
                "services": [],
            }
        )
    for name, guest in sorted(plan["guests"].items()):
        machines.append(
            {
                "name": name,
                "kind": "guest",
                "role": f"incus {guest['kind']}" if guest.get("kind") else "microvm",
                "host": guest["host"],
                "address": guest["address"],
                "mac": guest["mac"],
                "tap": guest["tap"],
                "vcpu": guest["vcpu"],
                "memory": guest["memory"],
                "hypervisor": guest["hypervisor"],
                "services": guest["services"],
                "ports": [f"{p['port']}/{p['proto']}" for p in guest["ports"]],
                "dependsOn": guest["dependsOn"],
            }
        )
    public = [
        {
            "entry": f"{plan['relay']['publicAddress']}:{f['port']}/{f['proto']}",
            "via": plan["relay"]["host"],
            "to": f["guest"],
            "address": f"{f['address']}:{f['port']}",
        }
        for f in (plan["relay"] or {"forwards": []})["forwards"]
    ]
    state = [
        {
            "guest": name,
            "sizeMiB": g["state"]["size"],
            "dataset": g["state"]["dataset"],
            "hostPath": g["state"]["hostPath"],
            "guestPath": g["state"]["guestPath"],
        }
        for name, g in sorted(plan["guests"].items())
        if g["state"]
    ]
    secrets = [
        {
            "file": path,
            "decryptableBy": sorted(f["machines"]) + [f"admin:{a}" for a in f["admins"]],
            "keys": f["keys"],
            "purpose": f["purpose"],
        }
        for path, f in sorted(plan["secrets"].items())
    ]
    return {
        "domain": plan["domain"],
        "certificates": plan["certificates"]["mode"],
        "network": plan["network"],
        "machines": machines,
        "routes": [
            {
                "url": f"https://{r['fqdn']}{'' if r['path'] == '/' else r['path']}",
                "to": r["guest"],
                "upstream": ("h2c://" if r["h2c"] else "") + r["upstream"],
            }
            for r in plan["routes"]
        ],
        "dns": plan["dns"],
        "flows": [
            {k: f[k] for k in ("from", "to", "port", "proto", "reason")} for f in plan["allow"]
        ],
        "egress": [
            {k: e[k] for k in ("from", "to", "port", "proto", "reason")} for e in plan["egress"]
        ],
        "input": [
            {k: i[k] for k in ("host", "from", "port", "proto", "reason")} for i in plan["input"]
        ],
        "public": public,
        "tunnel": None
        if plan["relay"] is None
        else {
            "relay": plan["relay"]["host"],
            "dialedBy": plan["relay"]["peer"]["host"],
            "endpoint": f"{plan['relay']['publicAddress']}:{plan['relay']['port']}/udp",
        },
        "state": state,
        "secrets": secrets,
        "deployOrder": plan["deployOrder"],
    }


def to_markdown(d: dict[str, Any]) -> str:  # noqa: PLR0915 - one section after another
    out: list[str] = []
    add = out.append
    net = d["network"]
    add(f"# Homestack: {d['domain']}")
    add("")
    hosts = [m for m in d["machines"] if m["kind"] == "host"]
    guests = [m for m in d["machines"] if m["kind"] == "guest"]
    add(
        f"{len(hosts)} hosts and {len(guests)} MicroVM guests. Guests sit on `{net['bridge']}` "
        f"({net['cidr']}, gateway {net['gateway']}); certificates: {d['certificates']}."
    )
    add("")
    add("## Machines")
    add("")
    add("| machine | kind | where | address | resources | services |")
    add("| --- | --- | --- | --- | --- | --- |")
    for m in hosts:
        where = m["publicAddress"] or m["reach"]
        runs = "WireGuard, forwards"
        if m["role"] == "hypervisor":
            runs = "Incus daemon only" if m["engine"] == "incus" else "none: runs guests only"
        add(f"| {m['name']} | {m['role']} host ({m['system']}) | {where} | | | {runs} |")
    for m in guests:
        # A guest with no catalogued service still lists the ports it declares itself.
        services = ", ".join(m["services"]) or "own service"
        ports = f" ({', '.join(m['ports'])})" if m["ports"] else ""
        runs_as = m["role"] if m["role"] != "microvm" else m["hypervisor"]
        add(
            f"| {m['name']} | guest on {m['host']} ({runs_as}) | {m['tap']} {m['mac']} | "
            f"{m['address']} | {m['vcpu']} vCPU, {m['memory']} MiB | {services}{ports} |"
        )
    add("")
    add("## What is public")
    add("")
    if d["tunnel"]:
        t = d["tunnel"]
        add(
            f"`{t['dialedBy']}` dials the relay `{t['relay']}` at {t['endpoint']} (WireGuard, "
            "keepalive): no port forwarding at home."
        )
        add("")
        for p in d["public"]:
            add(f"- {p['entry']} on {p['via']} → {p['to']} ({p['address']}) through the tunnel")
    else:
        add("Nothing: there is no relay.")
    add("")
    add("## Routes (through the proxy, TLS terminated by Caddy)")
    add("")
    for r in d["routes"]:
        add(f"- {r['url']} → {r['to']} ({r['upstream']})")
    add("")
    add("## Who talks to whom")
    add("")
    add(
        "Into a guest, everything else is dropped twice: by the guest's own nftables and by "
        "the hypervisor (its bridge filter between guests, its forward chain for what it "
        "routes, guest to guest through the gateway included)."
    )
    add("")
    _pairs_table(add, d["flows"], "from", "to")
    add("")
    add("## What guests reach outside the guest network")
    add("")
    add(
        "Everything else a guest sends is dropped twice: by its own `output` chain and by the "
        "hypervisor. `internet` is any public address, `lan` the RFC 1918 ranges behind the "
        "hypervisor's LAN interface."
    )
    add("")
    _pairs_table(add, d["egress"], "from", "to")
    add("")
    add("## What the hosts' own services accept")
    add("")
    add(
        "Nothing else reaches a host: `lan` is its LAN interface, `mesh` the NetBird interface "
        "(NetBird's policies choose the peers), `internet` any interface but the tunnel."
    )
    add("")
    _pairs_table(add, d["input"], "from", "host")
    add("")
    add("## Where state lives")
    add("")
    for s in d["state"]:
        add(
            f"- {s['guest']}: {s['sizeMiB']} MiB, ZFS dataset `{s['dataset']}` at "
            f"`{s['hostPath']}`, seen in the guest as `{s['guestPath']}`"
        )
    add("")
    add("## Where secrets live")
    add("")
    add("| file | who can decrypt | holds |")
    add("| --- | --- | --- |")
    for s in d["secrets"]:
        add(f"| `{s['file']}` | {', '.join(s['decryptableBy'])} | {', '.join(s['keys']) or '—'} |")
    add("")
    add("## Deploy order")
    add("")
    for i, wave in enumerate(d["deployOrder"], 1):
        add(f"{i}. {', '.join(wave)}")
    return "\n".join(out) + "\n"


def _pairs_table(add: Any, rows: list[dict[str, Any]], src: str, dst: str) -> None:
    """One table row per (source, destination, reason) with its ports."""
    by_pair: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in rows:
        by_pair[(f[src], f[dst], f["reason"])].append(f)
    add("| from | to | ports | why |")
    add("| --- | --- | --- | --- |")
    for (a, b, why), flows in by_pair.items():
        add(f"| {a} | {b} | {_ports(flows)} | {why} |")


def _q(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def _node(name: str, label: str, fill: str, indent: str = "  ") -> str:
    return f'{indent}{_q(name)} [label={_q(label)}, fillcolor="{fill}"];'


def _edge(src: str, dst: str, label: str, extra: str = "") -> str:
    return f"  {_q(src)} -> {_q(dst)} [label={_q(label)}{extra}];"


# Flows every guest has with its hypervisor; the picture leaves them out.
_ROUTINE = (
    "ssh from the hypervisor",
    "health check from the hypervisor",
    "time from the hypervisor",
)
_ORANGE = ', color="#c77d00"'


def to_dot(d: dict[str, Any]) -> str:
    """The topology for Graphviz: `tools explain --format dot | dot -Tsvg > topology.svg`."""
    net = d["network"]
    out = [
        "digraph homestack {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.35, ranksep=0.9];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
        '  internet [label="Internet", shape=ellipse, fillcolor="#eeeeee"];',
        '  lan [label="LAN clients", shape=ellipse, fillcolor="#eeeeee"];',
    ]
    hosts = [m for m in d["machines"] if m["kind"] == "host"]
    guests = [m for m in d["machines"] if m["kind"] == "guest"]
    for h in hosts:
        if h["role"] == "relay":
            out.append(
                _node(h["name"], f"{h['name']}\nrelay {h['publicAddress'] or ''}", "#fde9c9")
            )
    for h in hosts:
        if h["role"] != "hypervisor":
            continue
        engine = "Incus" if h.get("engine") == "incus" else "microvm.nix"
        title = f"{h['name']} (hypervisor, {engine}) — {net['bridge']} {net['cidr']}"
        out.append(f"  subgraph {_q('cluster_' + h['name'])} {{")
        out.append(f'    label={_q(title)}; style="rounded"; color="#7a9cc6";')
        out.append(_node(h["name"], f"{h['name']}\ngateway {net['gateway']}", "#dce8f7", "    "))
        for g in guests:
            if g["host"] == h["name"]:
                label = f"{g['name']}\n{g['address']}\n{', '.join(g['services'])}"
                out.append(_node(g["name"], label, "#e6f4e6", "    "))
        out.append("  }")
    if d["tunnel"]:
        t = d["tunnel"]
        public = [(p["to"], p["entry"].split(":")[1]) for p in d["public"]]
        out.append(
            _edge(t["dialedBy"], t["relay"], "WireGuard (dials out)", ", style=bold" + _ORANGE)
        )
        out.append(_edge("internet", t["relay"], ", ".join(port for _, port in public)))
        for target in sorted({to for to, _ in public}):
            ports = ", ".join(port for to, port in public if to == target)
            out.append(_edge(t["relay"], target, ports, ", style=dashed" + _ORANGE))
    relays = {h["name"] for h in hosts if h["role"] == "relay"}
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    # The relay's forwards are drawn above, from `public`.
    for f in d["flows"]:
        if f["reason"] not in _ROUTINE and f["from"] not in relays:
            pairs[(f["from"], f["to"])].append(f"{f['port']}/{f['proto']}")
    out.extend(_edge(src, dst, ", ".join(ports)) for (src, dst), ports in pairs.items())
    out.extend(_outside_edges(d, hosts))
    out.append("}")
    return "\n".join(out) + "\n"


def _outside_edges(d: dict[str, Any], hosts: list[dict[str, Any]]) -> list[str]:
    """Egress out of the guest network (red, dashed), and what the hypervisors' own
    services accept from the LAN and the mesh (blue)."""
    out: list[str] = []
    outbound: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in d["egress"]:
        if e["reason"] not in _ROUTINE:
            outbound[(e["from"], e["to"])].append(f"{e['port']}/{e['proto']}")
    out.extend(
        _edge(src, dst, ", ".join(ports), ', color="#b03a2e", style=dashed')
        for (src, dst), ports in outbound.items()
    )
    hypervisors = {h["name"] for h in hosts if h["role"] == "hypervisor"}
    inbound: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i in d["input"]:
        if i["host"] in hypervisors and i["from"] in {"lan", "mesh"}:
            inbound[(i["from"], i["host"])].append(f"{i['port']}/{i['proto']}")
    if any(src == "mesh" for src, _ in inbound):
        out.append('  mesh [label="mesh peers\n(NetBird)", shape=ellipse, fillcolor="#eeeeee"];')
    out.extend(
        _edge(src, dst, ", ".join(ports), ', color="#7a9cc6"')
        for (src, dst), ports in inbound.items()
    )
    return out


@click.command()
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "json", "dot"]), default="markdown",
    show_default=True, help="markdown for people, json for programs, dot for Graphviz.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@inventory_option
def explain(fmt: str, as_json: bool, inventory_path: Path | None) -> None:
    """Describe the whole architecture: machines, services, flows, public entry, state, secrets."""
    if as_json:
        fmt = "json"
    path = find_inventory(inventory_path)
    d = describe(load_plan(path))
    if fmt == "json":
        click.echo(json.dumps(d, indent=2))
    elif fmt == "dot":
        click.echo(to_dot(d), nl=False)
    else:
        click.echo(to_markdown(d), nl=False)
