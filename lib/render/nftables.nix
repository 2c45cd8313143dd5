# nftables rule sets: one `inet` table per guest (default drop, only the flows the
# plan allows towards it), one `bridge` table for the hypervisor (guest-to-guest
# frames: anti-spoofing, then only allowed flows), and the hosts' NAT tables.
let
  u = import ../util.nix;
  inherit (builtins) concatStringsSep filter groupBy attrNames;

  # The `inet` rule set of one guest, given the flows towards it.
  guestWith =
    plan: name: flows:
    let
      # One rule per port/proto, sources as a set; "lan" is anything outside the guest net.
      byPort = groupBy (f: "${f.proto} ${toString f.port}") flows;
      rule =
        key:
        let
          fs = byPort.${key};
          addrs = u.uniqueOrdered (map (f: f.fromAddress) (filter (f: f.fromKind != "lan") fs));
          lan = builtins.any (f: f.fromKind == "lan") fs;
          first = builtins.head fs;
          match = "${first.proto} dport ${toString first.port}";
          why = concatStringsSep ", " (u.uniqueOrdered (map (f: f.from) fs));
        in
        u.optional (addrs != [ ]) "\t\tip saddr { ${concatStringsSep ", " addrs} } ${match} accept comment \"from ${why}\""
        ++ u.optional lan "\t\tip saddr != ${plan.network.cidr} ${match} accept comment \"from lan\"";
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for guest ${name}. Do not edit."
        "table inet homestack {"
        "\tchain input {"
        "\t\ttype filter hook input priority filter; policy drop;"
        "\t\tct state established,related accept"
        "\t\tct state invalid drop"
        "\t\tiifname \"lo\" accept"
        "\t\tip saddr ${plan.network.gateway} icmp type echo-request accept comment \"ping from the hypervisor\""
      ]
      ++ u.concatMap rule (attrNames byPort)
      ++ [
        "\t}"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
        "\t}"
        "\tchain output {"
        "\t\ttype filter hook output priority filter; policy accept;"
        "\t}"
        "}"
      ]
    );
in
{
  # All guests' rule sets at once: the flows are grouped by destination a single time.
  guests =
    plan:
    let
      byTo = groupBy (f: f.to) plan.allow;
    in
    builtins.mapAttrs (name: _: guestWith plan name (byTo.${name} or [ ])) plan.guests;

  guest = plan: name: guestWith plan name (filter (f: f.to == name) plan.allow);

  bridge =
    plan: host:
    let
      names = filter (g: plan.guests.${g}.host == host) (attrNames plan.guests);
      here = builtins.listToAttrs (map (g: { name = g; value = true; }) names);
      flows = filter (f: f.fromKind == "guest" && here ? ${f.from} && here ? ${f.to}) plan.allow;
      spoof =
        g:
        let
          x = plan.guests.${g};
        in
        [
          "\t\tiifname \"${x.tap}\" ether saddr != ${x.mac} drop comment \"${g}: own MAC only\""
          "\t\tiifname \"${x.tap}\" ether type ip ip saddr != ${x.address} drop comment \"${g}: own address only\""
        ];
      rule = f: "\t\tip saddr ${f.fromAddress} ip daddr ${f.toAddress} ${f.proto} dport ${toString f.port} accept comment \"${f.from} -> ${f.to}\"";
      # Stateless replies: bridge conntrack (nf_conntrack_bridge) is not everywhere. A reply
      # comes from the allowed port and, for TCP, is never a bare SYN, so the server cannot
      # open a connection back this way; the guests' own stateful firewalls still apply.
      reply =
        f:
        "\t\tip saddr ${f.toAddress} ip daddr ${f.fromAddress} ${f.proto} sport ${toString f.port}"
        + (if f.proto == "tcp" then " tcp flags & (syn | ack) != syn" else "")
        + " accept comment \"${f.to} -> ${f.from} (reply)\"";
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for hypervisor ${host}. Do not edit."
        "# Frames between guests on ${plan.network.bridge}; traffic to or through the host is not seen here."
        "table bridge homestack {"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
      ]
      ++ u.concatMap spoof names
      ++ [
        "\t\tether type arp accept"
        "\t\tether type ip6 drop"
      ]
      ++ map rule flows
      ++ map reply flows
      ++ [
        "\t}"
        "}"
      ]
    );

  # A hypervisor's own rules: NAT of the guest network out of the LAN interface, and the
  # flows into the guest network that do not cross the bridge (routed from the LAN or the
  # tunnel, or sent by the hypervisor itself) limited to what the plan allows.
  hypervisorNat =
    plan: host:
    let
      br = plan.network.bridge;
      names = u.toSet (filter (g: plan.guests.${g}.host == host) (attrNames plan.guests));
      fromLan = filter (f: f.fromKind == "lan" && names ? ${f.to}) plan.allow;
      fromHost = filter (f: f.fromKind == "host" && f.from == host && names ? ${f.to}) plan.allow;
      accept = f: "\t\toifname \"${br}\" ip daddr ${f.toAddress} ${f.proto} dport ${toString f.port} accept comment \"${f.from} -> ${f.to}\"";
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for hypervisor ${host}. Do not edit."
        "table ip homestack-nat {"
        "\tchain postrouting {"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        "\t\toifname \"${plan.hosts.${host}.lanInterface}\" ip saddr ${plan.network.cidr} masquerade"
        "\t}"
        "}"
        "table inet homestack-guests {"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy accept;"
        "\t\toifname \"${br}\" ct state established,related accept"
      ]
      ++ map accept (filter (f: f.toAddress != null) fromLan)
      ++ [
        "\t\toifname \"${br}\" iifname != \"${br}\" drop comment \"into the guest network: allowed flows only\""
        "\t}"
        "\tchain output {"
        "\t\ttype filter hook output priority filter; policy accept;"
        "\t\toifname \"${br}\" ct state established,related accept"
        "\t\toifname \"${br}\" icmp type echo-request accept"
      ]
      ++ map accept fromHost
      ++ [
        "\t\toifname \"${br}\" ip daddr ${plan.network.cidr} drop comment \"from this host: allowed flows only\""
        "\t}"
        "}"
      ]
    );

  # Relay: public ports are forwarded through the tunnel; sources are rewritten to the
  # relay's tunnel address so replies return through the tunnel (see docs/nixos.md).
  relay =
    plan:
    let
      r = plan.relay;
      fwd = f: "\t\tfib daddr type local iifname != \"${r.interface}\" ${f.proto} dport ${toString f.port} dnat to ${f.address} comment \"${f.guest}\"";
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for relay ${r.host}. Do not edit."
        "table ip homestack-relay {"
        "\tchain prerouting {"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;"
      ]
      ++ map fwd r.forwards
      ++ [
        "\t}"
        "\tchain postrouting {"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        "\t\toifname \"${r.interface}\" ip daddr ${plan.network.cidr} masquerade"
        "\t}"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
        "\t\tct state established,related accept"
      ]
      ++ map (f: "\t\toifname \"${r.interface}\" ip daddr ${f.address} ${f.proto} dport ${toString f.port} accept") r.forwards
      ++ [
        "\t}"
        "}"
      ]
    );
}
