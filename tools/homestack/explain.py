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

from homestack.inventory import find_inventory, load_inventory
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
                "role": "microvm",
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
            {"url": f"https://{r['fqdn']}{'' if r['path'] == '/' else r['path']}", "to": r["guest"],
             "upstream": ("h2c://" if r["h2c"] else "") + r["upstream"]}
            for r in plan["routes"]
        ],  # fmt: skip
        "dns": plan["dns"],
        "flows": [
            {k: f[k] for k in ("from", "to", "port", "proto", "reason")} for f in plan["allow"]
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


def to_markdown(d: dict[str, Any]) -> str:
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
        add(f"| {m['name']} | {m['role']} host ({m['system']}) | {where} | | | none: runs guests only |"
            if m["role"] == "hypervisor"
            else f"| {m['name']} | {m['role']} host ({m['system']}) | {where} | | | WireGuard, port forwards |")
    for m in guests:
        add(
            f"| {m['name']} | guest on {m['host']} ({m['hypervisor']}) | {m['tap']} {m['mac']} | "
            f"{m['address']} | {m['vcpu']} vCPU, {m['memory']} MiB | {', '.join(m['services'])} "
            f"({', '.join(m['ports'])}) |"
        )
    add("")
    add("## What is public")
    add("")
    if d["tunnel"]:
        t = d["tunnel"]
        add(f"`{t['dialedBy']}` dials the relay `{t['relay']}` at {t['endpoint']} (WireGuard, "
            "keepalive): no port forwarding at home.")
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
    add("Everything else is dropped twice: by the destination guest's nftables and by the "
        "hypervisor's bridge filter.")
    add("")
    by_pair: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in d["flows"]:
        by_pair[(f["from"], f["to"], f["reason"])].append(f)
    add("| from | to | ports | why |")
    add("| --- | --- | --- | --- |")
    for (src, dst, why), flows in by_pair.items():
        add(f"| {src} | {dst} | {_ports(flows)} | {why} |")
    add("")
    add("## Where state lives")
    add("")
    for s in d["state"]:
        add(f"- {s['guest']}: {s['sizeMiB']} MiB, ZFS dataset `{s['dataset']}` at `{s['hostPath']}`, "
            f"seen in the guest as `{s['guestPath']}`")
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


def _q(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def to_dot(d: dict[str, Any]) -> str:
    """The topology for Graphviz: `tools explain --format dot | dot -Tsvg > topology.svg`."""
    out = [
        "digraph homestack {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.35, ranksep=0.9];',
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
        '  internet [label="Internet", shape=ellipse, fillcolor="#eeeeee"];',
        '  lan [label="LAN clients", shape=ellipse, fillcolor="#eeeeee"];',
    ]
    hosts = [m for m in d["machines"] if m["kind"] == "host"]
    guests = [m for m in d["machines"] if m["kind"] == "guest"]
    for h in hosts:
        if h["role"] == "relay":
            out.append(f"  {_q(h['name'])} [label={_q(h['name'] + chr(10) + 'relay ' + (h['publicAddress'] or ''))}, fillcolor=\"#fde9c9\"];")
    for h in hosts:
        if h["role"] != "hypervisor":
            continue
        out.append(f"  subgraph {_q('cluster_' + h['name'])} {{")
        out.append(f"    label={_q(h['name'] + ' (hypervisor) — ' + d['network']['bridge'] + ' ' + d['network']['cidr'])};")
        out.append('    style="rounded"; color="#7a9cc6";')
        out.append(f"    {_q(h['name'])} [label={_q(h['name'] + chr(10) + 'gateway ' + d['network']['gateway'])}, fillcolor=\"#dce8f7\"];")
        for g in guests:
            if g["host"] == h["name"]:
                label = f"{g['name']}\n{g['address']}\n{', '.join(g['services'])}"
                out.append(f"    {_q(g['name'])} [label={_q(label)}, fillcolor=\"#e6f4e6\"];")
        out.append("  }")
    if d["tunnel"]:
        t = d["tunnel"]
        out.append(f"  {_q(t['dialedBy'])} -> {_q(t['relay'])} [label=\"WireGuard (dials out)\", style=bold, color=\"#c77d00\"];")
        out.append(f"  internet -> {_q(t['relay'])} [label={_q(', '.join(p['entry'].split(':')[1] for p in d['public']))}];")
        for target in sorted({p["to"] for p in d["public"]}):
            ports = ", ".join(p["entry"].split(":")[1] for p in d["public"] if p["to"] == target)
            out.append(f"  {_q(t['relay'])} -> {_q(target)} [label={_q(ports)}, style=dashed, color=\"#c77d00\"];")
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in d["flows"]:
        if f["reason"] == "ssh from the hypervisor":
            continue
        src = "lan" if f["from"] == "lan" else f["from"]
        pairs[(src, f["to"])].append(f"{f['port']}/{f['proto']}")
    for (src, dst), ports in pairs.items():
        out.append(f"  {_q(src)} -> {_q(dst)} [label={_q(', '.join(ports))}];")
    out.append("}")
    return "\n".join(out) + "\n"


@click.command()
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "json", "dot"]), default="markdown",
    show_default=True, help="markdown for people, json for programs, dot for Graphviz.",
)  # fmt: skip
@click.option("--inventory", "-i", "inventory_path", type=click.Path(path_type=Path), default=None,
              help="Inventory file (default: ./inventory.toml or $HOMESTACK_INVENTORY).")  # fmt: skip
def explain(fmt: str, inventory_path: Path | None) -> None:
    """Describe the whole architecture: machines, services, flows, public entry, state, secrets."""
    path = find_inventory(inventory_path)
    load_inventory(path)
    d = describe(load_plan(path))
    if fmt == "json":
        click.echo(json.dumps(d, indent=2))
    elif fmt == "dot":
        click.echo(to_dot(d), nl=False)
    else:
        click.echo(to_markdown(d), nl=False)
