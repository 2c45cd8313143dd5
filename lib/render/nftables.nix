# nftables rule sets: one `inet` table per guest (default drop in and out, only the flows
# the plan allows), and for each hypervisor a `bridge` table (anti-spoofing, then only the
# allowed guest-to-guest frames) plus an `inet` table for everything the hypervisor routes
# or receives itself, and the relay's NAT and input tables.
#
# Flows are set elements matched by concatenations (`ip saddr . meta l4proto . th dport
# @set`), so a packet costs one hash lookup per rule however many guests and flows there
# are. Comments stay within nft's limit: NFTNL_UDATA_COMMENT_MAXLEN is 128 (libnftnl,
# include/libnftnl/udata.h), and nftables' parser rejects longer ones with "comment too
# long, 128 characters maximum allowed" (src/parser_bison.y).
let
  u = import ../util.nix;
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    length
    stringLength
    substring
    ;

  commentMax = 128;
  # A quoted comment cut to nft's limit (names are validated: no quotes inside).
  comment = s: "comment \"${if stringLength s <= commentMax then s else substring 0 (commentMax - 3) s + "..."}\"";

  # Addresses that are not "the internet": this host, private, shared (CGNAT, where mesh
  # VPNs live), link-local, multicast and reserved ranges.
  notInternet = [
    "0.0.0.0/8"
    "10.0.0.0/8"
    "100.64.0.0/10"
    "127.0.0.0/8"
    "169.254.0.0/16"
    "172.16.0.0/12"
    "192.168.0.0/16"
    "224.0.0.0/3"
  ];
  # "lan" as an egress destination: the RFC 1918 ranges a home LAN uses.
  lanNets = [
    "10.0.0.0/8"
    "172.16.0.0/12"
    "192.168.0.0/16"
  ];

  pp = f: "${f.proto} . ${toString f.port}";
  # A named set as one block of lines; each element is { key; why; }, the first element of
  # a key wins. Built as few strings as possible: a plan of 10,000 guests renders 70,000 sets.
  set =
    name: type: interval: elems:
    let
      n = length elems;
      # The first element of each key, in order (see util.nix firstOfEach).
      unique = if n < 2 then elems else builtins.genericClosure { startSet = elems; operator = _: [ ]; };
      line = e: if e.why == null then "\t\t\t${e.key}," else "\t\t\t${e.key} ${comment e.why},";
      opening = "\tset ${name} {\n\t\ttype ${type}" + (if interval then "\n\t\tflags interval" else "");
    in
    [
      (
        if n == 0 then
          "${opening}\n\t}"
        else
          "${opening}\n\t\telements = {\n${concatStringsSep "\n" (map line unique)}\n\t\t}\n\t}"
      )
    ];
  nets = name: list: set name "ipv4_addr" true (map (n: { key = n; why = null; }) list);
  # Named sets of rules, by what an element matches: a port (portSet), an address that
  # `addr` picks and a port (addressPortSet), a source and a destination address and a port
  # (pairPortSet); `why` gives an element's comment.
  portSet = name: rules: set name "inet_proto . inet_service" false (map (r: { key = pp r; why = r.reason; }) rules);
  addressPortSet =
    name: addr: why: rules:
    set name "ipv4_addr . inet_proto . inet_service" false (map (r: { key = "${addr r} . ${pp r}"; why = why r; }) rules);
  pairPortSet =
    name: why: flows:
    set name "ipv4_addr . ipv4_addr . inet_proto . inet_service" false (
      map (f: { key = "${f.fromAddress} . ${f.toAddress} . ${pp f}"; why = why f; }) flows
    );
  # Where egress rules look: "not the internet" and the LAN's ranges.
  addressClasses = nets "not_internet" notInternet ++ nets "lan_nets" lanNets;

  # The head of a stateful input chain: replies, loopback, and nothing invalid.
  inputHead = [
    "\tchain input {"
    "\t\ttype filter hook input priority filter; policy drop;"
    "\t\tct state established,related accept"
    "\t\tct state invalid drop"
    "\t\tiifname \"lo\" accept"
  ];

  # ICMPv6 as NixOS's own nftables firewall accepts it (nixos/modules/services/networking/
  # firewall-nftables.nix): neighbour discovery and the rest, not redirects or node
  # information queries (RFC 4890, 4.4); and DHCPv6 answers.
  ipv6Basics = [
    "\t\ticmpv6 type != { nd-redirect, 139 } accept"
    "\t\tip6 daddr fe80::/64 udp dport 546 accept comment \"DHCPv6 client\""
  ];

  # What every guest's rule set shares after its own sets: rendered once per plan.
  guestTail =
    plan:
    let
      net = plan.network.cidr;
      # Sources the guest names by address: other guests, the relay (its tunnel address)
      # and the hypervisor (the gateway); "lan" is anything outside both networks.
      outside = "{ ${concatStringsSep ", " ([ net ] ++ u.optional (plan.tunnel != null) plan.tunnel.cidr)} }";
    in
    concatStringsSep "\n" (
      addressClasses
      ++ inputHead
      ++ [
        "\t\tip saddr ${plan.network.gateway} icmp type echo-request accept comment \"ping from the hypervisor\""
        "\t\tip saddr . meta l4proto . th dport @flows_in accept"
        "\t\tip saddr != ${outside} meta l4proto . th dport @lan_in accept comment \"from the LAN\""
        "\t}"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
        "\t}"
        "\tchain output {"
        "\t\ttype filter hook output priority filter; policy drop;"
        "\t\tct state established,related accept"
        "\t\toifname \"lo\" accept"
        "\t\tip daddr . meta l4proto . th dport @flows_out accept"
        "\t\tip daddr != @not_internet meta l4proto . th dport @internet_out accept comment \"to the internet\""
        "\t\tip daddr @lan_nets ip daddr != ${outside} meta l4proto . th dport @lan_out accept comment \"to the LAN\""
        "\t}"
        "}"
      ]
    );

  # The `inet` rule set of one guest, given the flows towards it, the flows it may open to
  # other guests and its egress; `tail` is guestTail of the plan.
  guestWith =
    tail: name: inFlows: outFlows: egress:
    let
      byAddress = filter (f: f.fromKind != "lan") inFlows;
      fromLan = filter (f: f.fromKind == "lan") inFlows;
      toAddresses = outFlows ++ filter (e: e.toKind == "host") egress;
      toInternet = filter (e: e.toKind == "internet") egress;
      toLan = filter (e: e.toKind == "lan") egress;
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for guest ${name}. Do not edit.\ntable inet homestack {"
      ]
      ++ addressPortSet "flows_in" (f: f.fromAddress) (f: "${f.from}: ${f.reason}") byAddress
      ++ portSet "lan_in" fromLan
      ++ addressPortSet "flows_out" (f: f.toAddress) (f: "${f.to}: ${f.reason}") toAddresses
      ++ portSet "internet_out" toInternet
      ++ portSet "lan_out" toLan
      ++ [ tail ]
    );

  guestsOn = plan: host: filter (g: plan.guests.${g}.host == host) (attrNames plan.guests);
in
{
  # All guests' rule sets at once: the flows are grouped a single time.
  guests =
    plan:
    let
      byTo = builtins.groupBy (f: f.to) plan.allow;
      byFrom = builtins.groupBy (f: f.from) (filter (f: f.fromKind == "guest") plan.allow);
      egressBy = builtins.groupBy (f: f.from) plan.egress;
      tail = guestTail plan;
    in
    builtins.mapAttrs (
      name: _: guestWith tail name (byTo.${name} or [ ]) (byFrom.${name} or [ ]) (egressBy.${name} or [ ])
    ) plan.guests;

  guest =
    plan: name:
    guestWith (guestTail plan) name (filter (f: f.to == name) plan.allow) (filter (f: f.from == name) plan.allow) (
      filter (f: f.from == name) plan.egress
    );

  # Frames on the hypervisor's guest bridge. `prerouting` sees every frame a guest sends,
  # also those to the gateway (which the bridge `forward` hook never sees): only the
  # guest's own MAC and address pass. `forward` passes only allowed guest-to-guest flows.
  bridge =
    plan: host:
    let
      names = guestsOn plan host;
      here = u.toSet names;
      flows = filter (f: f.fromKind == "guest" && here ? ${f.from} && here ? ${f.to}) plan.allow;
      port = g: plan.guests.${g};
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for hypervisor ${host}. Do not edit."
        "# Frames on ${plan.network.bridge}: what guests send, and what passes between two guests."
        "table bridge homestack {"
      ]
      ++ set "guest_macs" "ifname . ether_addr" false (
        map (g: { key = "\"${(port g).tap}\" . ${(port g).mac}"; why = g; }) names
      )
      ++ set "guest_addresses" "ifname . ether_addr . ipv4_addr" false (
        map (g: { key = "\"${(port g).tap}\" . ${(port g).mac} . ${(port g).address}"; why = g; }) names
      )
      ++ pairPortSet "flows" (f: "${f.from} -> ${f.to}") flows
      ++ [
        "\tchain prerouting {"
        "\t\ttype filter hook prerouting priority filter; policy drop;"
        "\t\tiifname . ether saddr . ip saddr @guest_addresses accept comment \"own MAC and address only\""
        "\t\tiifname . ether saddr . arp saddr ip @guest_addresses iifname . arp saddr ether . arp saddr ip @guest_addresses accept comment \"ARP for its own address\""
        "\t\tarp saddr ip 0.0.0.0 iifname . ether saddr @guest_macs accept comment \"ARP probe\""
        "\t}"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
        "\t\tether type arp accept"
        "\t\tip saddr . ip daddr . meta l4proto . th dport @flows accept"
        # Stateless replies: bridge conntrack (nf_conntrack_bridge) is not everywhere. A
        # reply comes from the allowed port and, for TCP, is never a bare SYN, so the server
        # cannot open a connection back this way; the guests' own stateful firewalls still apply.
        "\t\ttcp flags & (syn | ack) == syn drop"
        "\t\tip daddr . ip saddr . meta l4proto . th sport @flows accept comment \"replies\""
        "\t}"
        "}"
      ]
    );

  # A hypervisor's own rules: NAT of the guest network out of the LAN interface, and an
  # `inet` table for what the bridge filter does not see: packets to the hypervisor itself
  # (`input`), packets it routes (`forward`: guest to guest through the gateway, LAN and
  # tunnel into the guest network, guests out to the LAN and the internet), and packets it
  # sends into the guest network (`output`). Every base chain drops what the plan does not name.
  hypervisorNat =
    plan: host:
    let
      br = plan.network.bridge;
      lan = plan.hosts.${host}.lanInterface;
      names = u.toSet (guestsOn plan host);
      wg = if plan.relay != null && plan.relay.peer.host == host then plan.relay.interface else null;
      here = f: names ? ${f.to};
      guestFlows = filter (f: f.fromKind == "guest" && here f && names ? ${f.from}) plan.allow;
      lanFlows = filter (f: f.fromKind == "lan" && here f) plan.allow;
      tunnelFlows = filter (f: f.fromKind == "relay" && here f && f.fromAddress != null) plan.allow;
      hostFlows = filter (f: f.fromKind == "host" && f.from == host && here f) plan.allow;
      egress = filter (e: names ? ${e.from}) plan.egress;
      inputs = filter (r: r.host == host) plan.input;
      ifaceOf =
        r:
        if r.fromKind == "lan" then
          lan
        else if r.fromKind == "mesh" then
          plan.mesh.interface
        else
          null;
      byIface = filter (r: ifaceOf r != null) inputs;
      byGuest = filter (r: r.fromKind == "guest" && names ? ${r.from}) inputs;
      flowWhy = f: "${f.from} -> ${f.to}: ${f.reason}";
      fromWhy = r: "${r.from}: ${r.reason}";
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for hypervisor ${host}. Do not edit."
        "table ip homestack-nat {"
        "\tchain postrouting {"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        "\t\toifname \"${lan}\" ip saddr ${plan.network.cidr} masquerade"
        "\t}"
        "}"
        "table inet homestack {"
      ]
      ++ set "services" "ifname . inet_proto . inet_service" false (
        map (r: { key = "\"${ifaceOf r}\" . ${pp r}"; why = "${r.from}: ${r.reason}"; }) byIface
      )
      ++ addressPortSet "guest_services" (r: r.fromAddress) fromWhy byGuest
      ++ pairPortSet "guest_flows" (f: "${f.from} -> ${f.to}") guestFlows
      ++ addressPortSet "lan_flows" (f: f.toAddress) flowWhy lanFlows
      ++ pairPortSet "tunnel_flows" flowWhy tunnelFlows
      ++ addressPortSet "host_flows" (f: f.toAddress) (f: "${f.to}: ${f.reason}") hostFlows
      ++ addressPortSet "internet_egress" (e: e.fromAddress) fromWhy (filter (e: e.toKind == "internet") egress)
      ++ addressPortSet "lan_egress" (e: e.fromAddress) fromWhy (filter (e: e.toKind == "lan") egress)
      ++ addressClasses
      ++ inputHead
      ++ [
        "\t\tiifname . meta l4proto . th dport @services accept"
        "\t\tiifname \"${br}\" ip saddr . meta l4proto . th dport @guest_services accept"
        "\t\tiifname { ${concatStringsSep ", " (map (i: "\"${i}\"") ([ lan ] ++ u.optional (plan.mesh != null) plan.mesh.interface))} } icmp type echo-request accept"
        "\t\tiifname \"${lan}\" meta nfproto ipv6 jump lan_ipv6"
        "\t}"
        "\tchain lan_ipv6 {"
      ]
      ++ ipv6Basics
      ++ [
        "\t}"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
        "\t\tct state established,related accept"
        "\t\tiifname \"${br}\" oifname \"${br}\" ip saddr . ip daddr . meta l4proto . th dport @guest_flows accept comment \"guest to guest through the gateway\""
        "\t\tiifname \"${lan}\" oifname \"${br}\" ip daddr . meta l4proto . th dport @lan_flows accept comment \"from the LAN\""
      ]
      ++ u.optional (wg != null) "\t\tiifname \"${wg}\" oifname \"${br}\" ip saddr . ip daddr . meta l4proto . th dport @tunnel_flows accept comment \"the relay's forwards\""
      ++ [
        "\t\tiifname \"${br}\" oifname \"${lan}\" ip daddr != @not_internet ip saddr . meta l4proto . th dport @internet_egress accept comment \"guests to the internet\""
        "\t\tiifname \"${br}\" oifname \"${lan}\" ip daddr @lan_nets ip saddr . meta l4proto . th dport @lan_egress accept comment \"guests to the LAN\""
        "\t}"
        "\tchain output {"
        "\t\ttype filter hook output priority filter; policy accept;"
        "\t\toifname \"${br}\" ct state established,related accept"
        "\t\toifname \"${br}\" icmp type echo-request accept"
        "\t\toifname \"${br}\" ip daddr . meta l4proto . th dport @host_flows accept"
        "\t\toifname \"${br}\" drop comment \"from this host: allowed flows only\""
        "\t}"
        "}"
      ]
    );

  # Relay: public ports are forwarded through the tunnel; sources are rewritten to the
  # relay's tunnel address so replies return through the tunnel (see docs/nixos.md). Its
  # own services accept only what `input` names, never from the tunnel.
  relay =
    plan:
    let
      r = plan.relay;
      wg = r.interface;
      inputs = filter (i: i.host == r.host) plan.input;
      fwd = map (f: { key = "${f.proto} . ${toString f.port}"; address = f.address; why = f.guest; }) r.forwards;
      fwdKeys = u.uniqueOrdered (map (f: f.key) fwd);
      fwdFirst = builtins.listToAttrs (map (f: { name = f.key; value = f; }) fwd);
    in
    u.lines (
      [
        "# Rendered by Homestack (lib/render/nftables.nix) for relay ${r.host}. Do not edit."
        "table ip homestack-relay {"
      ]
      ++ set "forwards" "ipv4_addr . inet_proto . inet_service" false (
        map (f: { key = "${f.address} . ${f.key}"; why = f.why; }) fwd
      )
      ++ [
        "\tchain prerouting {"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;"
      ]
      ++ u.optional (fwdKeys != [ ]) (
        "\t\tfib daddr type local iifname != \"${wg}\" dnat to meta l4proto . th dport map { "
        + concatStringsSep ", " (map (k: "${k} : ${fwdFirst.${k}.address}") fwdKeys)
        + " }"
      )
      ++ [
        "\t}"
        "\tchain postrouting {"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
        # TCP (the proxy's 80/443) is masqueraded so its replies need no routing at home;
        # UDP (the mesh's STUN) keeps the peer's address, which STUN must see, and the
        # hypervisor routes its replies back through the tunnel (modules/wireguard.nix).
        "\t\toifname \"${wg}\" ip daddr ${plan.network.cidr} meta l4proto tcp masquerade"
        "\t}"
        "\tchain forward {"
        "\t\ttype filter hook forward priority filter; policy drop;"
        "\t\tct state established,related accept"
        "\t\toifname \"${wg}\" ip daddr . meta l4proto . th dport @forwards accept"
        "\t}"
        "}"
        "table inet homestack {"
      ]
      ++ portSet "services" inputs
      ++ inputHead
      ++ [
        "\t\tiifname != \"${wg}\" meta l4proto . th dport @services accept"
        "\t\ticmp type echo-request accept comment \"ping, from the tunnel too\""
        "\t\tiifname != \"${wg}\" meta nfproto ipv6 jump public_ipv6"
        "\t}"
        "\tchain public_ipv6 {"
      ]
      ++ ipv6Basics
      ++ [
        "\t}"
        "}"
      ]
    );
}
