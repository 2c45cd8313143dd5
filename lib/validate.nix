# Inventory validation, the only one in Homestack: `tools inventory check` prints this list
# and the plan throws it. Returns the problems, each "<key>: <what is wrong, what to do>",
# [] when the inventory is valid.
#
# First the shape (schema.nix: keys, types, bounds, whitelists), then, on a well-shaped
# inventory only, the rules between keys: addresses in their networks, names that refer to
# something, names nothing else may use, and the topology the plan supports (one
# hypervisor, one relay, one proxy, one PostgreSQL server, one DNS server).
let
  u = import ./util.nix;
  schema = import ./schema.nix;
  services = import ./services.nix;
  alternatives = import ./alternatives.nix;
  certnames = import ./certnames.nix;
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    genList
    head
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isString
    length
    listToAttrs
    match
    stringLength
    substring
    toJSON
    ;
  inherit (u) concatMap optional optionals;

  # A value as a message shows it: JSON (so a newline stays "\n"), long strings cut short.
  show =
    v:
    if isString v then
      toJSON (if stringLength v > 80 then substring 0 77 v + "..." else v)
    else if isAttrs v then
      "a table"
    else if isList v then
      "a list"
    else if isFloat v then
      "${toJSON v} (a decimal number)"
    else if isInt v || isBool v then
      toJSON v
    else
      builtins.typeOf v;
  # A user-chosen key in a dotted path: as it is when plain, quoted (TOML style) otherwise.
  showKey = k: if match "[A-Za-z0-9_-]+" k != null then k else toJSON k;
  showInt = n: toString n;

  # --- The shape ------------------------------------------------------------------------
  checkValue =
    path: t: v:
    if t.type == "string" then
      optional (!(isString v && match t.pattern v != null)) "${path}: ${show v} is not ${t.what}"
    else if t.type == "int" then
      if !(isInt v) then
        [ "${path}: ${show v} is not a whole number (from ${showInt t.min} to ${showInt t.max})" ]
      else
        optional (v < t.min || v > t.max) "${path}: ${toString v} is out of range (from ${showInt t.min} to ${showInt t.max})"
    else if t.type == "bool" then
      optional (!(isBool v)) "${path}: ${show v} is not true or false"
    else if t.type == "enum" then
      optional (!(isString v && elem v t.values)) "${path}: ${show v} is not one of ${u.showList t.values}"
    else if t.type == "list" then
      if !(isList v) then
        [ "${path}: must be a list, not ${show v}" ]
      else if length v > t.maxItems then
        [ "${path}: has ${toString (length v)} entries, at most ${toString t.maxItems} are allowed" ]
      else
        concatLists (u.imap0 (i: e: checkValue "${path}[${toString i}]" t.item e) v)
    else if t.type == "table" then
      if !(isAttrs v) then
        [ "${path}: must be a table, not ${show v}" ]
      else
        checkTable path t v
    else if t.type == "named" then
      if !(isAttrs v) then
        [ "${path}: must be a table, not ${show v}" ]
      else
        concatMap (
          n:
          let
            p = "${path}.${showKey n}";
          in
          if match t.pattern n == null then
            [ "${p}: ${t.what} name must be lowercase letters, digits and dashes, starting with a letter (at most 63)" ]
          else
            checkValue p t.value v.${n}
        ) (attrNames v)
    else
      throw "schema.nix: unknown type ${t.type} at ${path}";

  # Both walks go through the table's own keys (attrNames is sorted, so the values are
  # checked in the schema's order as before) and the required keys listed once per schema
  # table (`compile`): a table of 10,000 guests is checked without listing the schema's
  # keys 10,000 times.
  checkTable =
    path: t: v:
    let
      prefix = if path == "" then "" else "${path}.";
      names = attrNames v;
    in
    map (
      k:
      if (t.refuse or { }) ? ${k} then
        "${prefix}${k}: ${t.refuse.${k}}"
      else
        "${prefix}${showKey k}: unknown key (expected one of: ${u.showList (attrNames t.keys)})"
    ) (filter (k: !(t.keys ? ${k})) names)
    ++ map (k: "${prefix}${k}: missing required key") (filter (k: !(v ? ${k})) t.requiredKeys)
    ++ concatMap (k: checkValue "${prefix}${k}" t.keys.${k} v.${k}) (filter (k: t.keys ? ${k}) names);

  # The schema with each table's required keys listed once.
  compile =
    t:
    if t.type == "table" then
      t
      // {
        keys = builtins.mapAttrs (_: compile) t.keys;
        requiredKeys = filter (k: t.keys.${k}.required) (attrNames t.keys);
      }
    else if t.type == "list" then
      t // { item = compile t.item; }
    else if t.type == "named" then
      t // { value = compile t.value; }
    else
      t;
  inventorySchema = compile schema.inventory;

  # --- Words the plan gives meaning to --------------------------------------------------
  # Sources in `allow` and the lab's own namespaces; "internet" is kept for egress rules.
  planWords = [ "lan" "guests" "internet" "all" "any" "localhost" "gateway" "relay" ];
  # Accounts NixOS or the services create on every machine: an admin of that name would
  # be merged into (or fight with) the system account.
  systemUsers = [
    "root" "nobody" "nogroup" "daemon" "bin" "sys" "sync" "adm" "wheel" "users" "kmem" "tty"
    "disk" "audio" "video" "input" "kvm" "render" "sgx" "lp" "mail" "news" "uucp" "proxy"
    "backup" "man" "messagebus" "sshd" "polkituser" "nscd" "nixbld" "keys" "shadow" "utmp"
    "postgres" "caddy" "dnsmasq" "netbird" "pocket-id" "microvm" "acme" "nginx" "coturn"
    "headscale" "tailscale" "traefik" "incus-admin" "incus" "lxd" "avahi" "rtkit" "tss"
  ];
  # Names PostgreSQL gives a meaning to in pg_hba.conf or reserves for roles.
  pgReserved = [
    "postgres" "all" "sameuser" "samerole" "samegroup" "replication" "public" "none"
    "template0" "template1" "current_user" "current_role" "session_user" "user"
  ];
  # Names the kernel or sysctl use for interfaces (/proc/sys/net/ipv4/conf/{all,default}).
  ifReserved = [ "lo" "all" "default" "bonding_masters" ];
  zfsReserved = [ "mirror" "raidz" "raidz1" "raidz2" "raidz3" "draid" "spare" "log" "cache" "special" "dedup" ];
  # Address blocks a guest or tunnel network, or the relay's public address, must not use
  # (RFC 6890): "this network", loopback, link-local, multicast and reserved.
  forbiddenBlocks = [
    { cidr = "0.0.0.0/8"; what = "\"this network\" (0.0.0.0/8)"; }
    { cidr = "127.0.0.0/8"; what = "loopback (127.0.0.0/8)"; }
    { cidr = "169.254.0.0/16"; what = "link-local (169.254.0.0/16)"; }
    { cidr = "224.0.0.0/4"; what = "multicast (224.0.0.0/4)"; }
    { cidr = "240.0.0.0/4"; what = "reserved (240.0.0.0/4)"; }
  ];
  blocks = map (b: b // { net = u.parseCIDR b.cidr; }) forbiddenBlocks;
  overlaps = a: b: u.inCIDR a b.network || u.inCIDR b a.network;
  blockOfNet = net: filter (b: overlaps net b.net) blocks;
  blockOfIp = ip: filter (b: u.inCIDR b.net ip) blocks;
  isPrefixOf = pre: s: substring 0 (stringLength pre) s == pre;
in
{
  # Problems of the shape alone (what the JSON Schema can also say).
  shape = inv: checkTable "" inventorySchema inv;

  # validate inv: every problem; the rules between keys only on a well-shaped inventory.
  __functor =
    _: inv:
    let
      shape = checkTable "" inventorySchema inv;

  # --- Rules between keys (only on a well-shaped inventory) -----------------------------
  rules =
    let
      domain = inv.domain;
      users = inv.users;
      hosts = inv.hosts;
      guests = inv.guests;
      userNames = attrNames users;
      hostNames = attrNames hosts;
      guestNames = attrNames guests;
      guestNet = inv.networks.guests;
      cidr = u.parseCIDR guestNet.cidr;
      gatewayIp = u.parseIPv4 guestNet.gateway;
      tunnel = inv.networks.tunnel or null;
      tunnelCidr = if tunnel == null then null else u.parseCIDR tunnel.cidr;
      bridge = guestNet.bridge or "br-guests";
      certMode = (inv.certificates or { }).mode or "private-ca";

      rolesOf = role: filter (h: hosts.${h}.role == role) hostNames;
      hypervisors = rolesOf "hypervisor";
      relays = rolesOf "relay";
      hostSet = u.toSet hostNames;
      guestSet = u.toSet guestNames;

      running = s: filter (g: elem s guests.${g}.services) guestNames;
      proxies = filter (g: builtins.any (s: elem s alternatives.ingressServices) guests.${g}.services) guestNames;
      pgServers = running "postgresql";
      dnsServers = running "dnsmasq";

      # Ports a guest serves to others: its services' (from the catalogue; not those bound to
      # loopback only, such as Caddy's admin API) and its own `ports`.
      servedOf =
        g:
        u.toSet (
          concatMap (
            s: map (p: "${toString p.port}/${p.proto}") (filter (p: (p.scope or "any") != "loopback") services.${s}.ports)
          ) guests.${g}.services
          ++ map (p: "${toString p.port}/${p.proto}") (guests.${g}.ports or [ ])
        );
      served = builtins.mapAttrs (g: _: servedOf g) guests;
      servedList = g: u.showList (attrNames served.${g});
      notServed = g: port: proto: !(served.${g} ? "${toString port}/${proto}");

      # A network (guest or tunnel) must be usable: no host bits, room for hosts, no
      # special-purpose block.
      networkErrors =
        key: text: net:
        optional (net.address != net.network) "${key}: ${text} has host bits set (did you mean ${u.formatIPv4 net.network}/${toString net.prefix}?)"
        ++ optional (net.prefix < 8) "${key}: ${text} is larger than a /8; use a private network such as 192.168.100.0/24"
        ++ optional (net.prefix > 30) "${key}: /${toString net.prefix} leaves no room for machines (at most /30)"
        ++ map (b: "${key}: ${text} overlaps ${b.what}; use a private network such as 192.168.100.0/24") (blockOfNet net);
      edgeErrors =
        key: ip: text: net: netText:
        optional (
          u.inCIDR net ip && (ip == net.network || ip == net.network + net.size - 1)
        ) "${key}: ${text} is the network or broadcast address of ${netText}";

      topology =
        optional (length hypervisors > 1) "hosts.${showKey (builtins.elemAt hypervisors 1)}.role: one hypervisor is supported (hosts.${showKey (head hypervisors)} is one already): guests of several would share one gateway address"
        ++ optional (length relays > 1) "hosts.${showKey (builtins.elemAt relays 1)}.role: one relay is supported (hosts.${showKey (head relays)} is one already)"
        ++ optional (length proxies > 1) "guests.${showKey (builtins.elemAt proxies 1)}.services: one guest may run the ingress (${u.showList alternatives.ingressServices}; guests.${showKey (head proxies)} does already): the plan has one proxy"
        ++ optional (length pgServers > 1) "guests.${showKey (builtins.elemAt pgServers 1)}.services: one guest may run postgresql (guests.${showKey (head pgServers)} does already): the plan has one database server"
        ++ optional (length dnsServers > 1) "guests.${showKey (builtins.elemAt dnsServers 1)}.services: one guest may run dnsmasq (guests.${showKey (head dnsServers)} does already): the plan has one DNS server"
        ++ optional (guestNames != [ ] && hypervisors == [ ]) "hosts: no host has role = \"hypervisor\", so nothing can run the guests";

      admins = filter (n: users.${n}.admin or false) userNames;
      userErrors =
        optional (admins == [ ]) "users: no user has admin = true (someone must be able to log in and decrypt)"
        ++ optional (
          admins != [ ] && filter (n: (users.${n}.ssh_keys or [ ]) != [ ]) admins == [ ]
        ) "users: no admin has an SSH key (deploy and the machines' root log in with one)"
        ++ concatMap (
          n:
          optional (elem n systemUsers || isPrefixOf "systemd-" n || isPrefixOf "nixbld" n) "users.${n}: ${n} is a system account on NixOS; choose another user name"
          ++ optional (elem n planWords) "users.${n}: ${n} is a word the plan gives a meaning to; choose another user name"
          ++ optional (stringLength n > 32) "users.${n}: a user name has at most 32 characters"
        ) userNames;

      certErrors =
        optional (certMode == "acme-dns01" && !((inv.certificates or { }) ? acme_email)) "certificates.acme_email: missing required key (acme-dns01 mode needs an e-mail for the ACME account)"
        ++ optional (stringLength domain > 253) "domain: longer than 253 characters"
        ++ certnames.errors inv;

      netErrors =
        networkErrors "networks.guests.cidr" guestNet.cidr cidr
        ++ (
          if !(u.inCIDR cidr gatewayIp) then
            [ "networks.guests.gateway: ${guestNet.gateway} is outside networks.guests.cidr ${guestNet.cidr}" ]
          else
            edgeErrors "networks.guests.gateway" gatewayIp guestNet.gateway cidr "networks.guests.cidr ${guestNet.cidr}"
        )
        ++ optional (elem bridge ifReserved) "networks.guests.bridge: ${bridge} is a name the kernel uses; choose another"
        ++ optionals (tunnel != null) (
          networkErrors "networks.tunnel.cidr" tunnel.cidr tunnelCidr
          ++ optional (overlaps tunnelCidr cidr) "networks.tunnel.cidr: ${tunnel.cidr} overlaps networks.guests.cidr ${guestNet.cidr}"
        );

      lanInterfaces = concatMap (h: optional (hosts.${h} ? lan_interface) hosts.${h}.lan_interface) hostNames;

      hostErrors = concatMap (
        name:
        let
          h = hosts.${name};
          p = "hosts.${name}";
          wg = h.wireguard or null;
          wgIp = u.parseIPv4 wg.address;
          pub = u.parseIPv4 h.public_address;
          relayOk = r: hostSet ? ${r} && hosts.${r}.role == "relay";
        in
        optional (guestSet ? ${name}) "${p}: the name is also used by guests.${name}; every machine needs its own name"
        ++ optional (elem name planWords) "${p}: ${name} is a word the plan gives a meaning to (an allow source or a lab name); choose another host name"
        ++ optionals (h.role == "hypervisor") (
          optional (!(h ? lan_interface)) "${p}.lan_interface: missing required key (hypervisors NAT the guest network out of it)"
          ++ optional (!(h ? zfs)) "${p}.zfs: missing required key (hypervisors keep each guest's state on a ZFS dataset)"
          ++ optional (h ? public_address) "${p}.public_address: only a relay has a public address here"
          ++ optional (tunnel != null && relays != [ ] && wg == null) "${p}.wireguard: missing required key (the hypervisor dials the relay ${head relays} over WireGuard)"
          ++ optional (wg != null && !(wg ? relay)) "${p}.wireguard.relay: missing required key (the relay host this hypervisor dials)"
          ++ optional (wg != null && wg ? relay && !(relayOk wg.relay)) "${p}.wireguard.relay: ${show wg.relay} is not a host with role = \"relay\""
          ++ optional (wg != null && wg ? port) "${p}.wireguard.port: the hypervisor dials out and listens on no port; remove it"
          ++ optional (h ? lan_interface && h.lan_interface == bridge) "${p}.lan_interface: ${h.lan_interface} is also the guest bridge's name"
          ++ optional (h ? lan_interface && elem h.lan_interface ifReserved) "${p}.lan_interface: ${h.lan_interface} is a name the kernel uses, not a network card"
        )
        ++ optionals (h.role == "relay") (
          optional (!(h ? public_address)) "${p}.public_address: missing required key (the relay's public IPv4 address)"
          ++ optional (wg == null) "${p}.wireguard: missing required key (the relay is the tunnel's endpoint: address, public_key and port)"
          ++ optional (wg != null && !(wg ? port)) "${p}.wireguard.port: missing required key (the relay listens on it)"
          ++ optional (wg != null && wg ? relay) "${p}.wireguard.relay: only a hypervisor dials a relay; remove it"
          ++ optional (wg != null && wg ? port && wg.port == 22) "${p}.wireguard.port: 22 is the relay's SSH port"
          ++ optional (
            wg != null && filter (o: (hosts.${o}.wireguard or { }).relay or null == name) hostNames == [ ]
          ) "${p}: no hypervisor dials this relay (set wireguard.relay = \"${name}\" on the hypervisor)"
          ++ optional (h ? lan_interface) "${p}.lan_interface: only a hypervisor has a guest network to NAT"
          ++ optional (h ? zfs) "${p}.zfs: only a hypervisor keeps guest state"
        )
        ++ optionals (h ? public_address) (
          map (b: "${p}.public_address: ${h.public_address} is ${b.what}, not a public address") (blockOfIp pub)
          ++ optional (pub == 4294967295) "${p}.public_address: 255.255.255.255 is the broadcast address"
          ++ optional (u.inCIDR cidr pub) "${p}.public_address: ${h.public_address} is inside networks.guests.cidr ${guestNet.cidr}"
          ++ optional (tunnelCidr != null && u.inCIDR tunnelCidr pub) "${p}.public_address: ${h.public_address} is inside networks.tunnel.cidr ${tunnel.cidr}"
        )
        ++ optionals (h ? zfs) (
          optional (elem h.zfs.pool zfsReserved || match "c[0-9].*" h.zfs.pool != null) "${p}.zfs.pool: ${h.zfs.pool} is a name zpool reserves"
        )
        ++ optionals (wg != null) (
          if tunnel == null then
            [ "${p}.wireguard: needs networks.tunnel.cidr" ]
          else if !(u.inCIDR tunnelCidr wgIp) then
            [ "${p}.wireguard.address: ${wg.address} is outside networks.tunnel.cidr ${tunnel.cidr}" ]
          else
            edgeErrors "${p}.wireguard.address" wgIp wg.address tunnelCidr "networks.tunnel.cidr ${tunnel.cidr}"
        )
      ) hostNames
      ++ map (a: "hosts.${firstOwner (n: ((hosts.${n}.wireguard or { }).address or null) == a) hostNames 1}.wireguard.address: ${a} is used twice in networks.tunnel") (
        u.duplicates (concatMap (n: optional (hosts.${n} ? wireguard) hosts.${n}.wireguard.address) hostNames)
      )
      ++ map (k: "hosts.${firstOwner (n: (hosts.${n}.wireguard or { }).public_key or null == k) hostNames 1}.wireguard.public_key: also the key of hosts.${firstOwner (n: (hosts.${n}.wireguard or { }).public_key or null == k) hostNames 0}; each end needs its own key pair") (
        u.duplicates (concatMap (n: optional (hosts.${n} ? wireguard) hosts.${n}.wireguard.public_key) hostNames)
      );

      # The n-th (0-based) name whose value satisfies pred: for naming the second owner.
      firstOwner = pred: names: n: showKey (builtins.elemAt (filter pred names) n);

      relay = if relays == [ ] then null else head relays;
      relayWg = if relay == null then null else hosts.${relay}.wireguard or null;

      guestErrors = concatMap (
        name:
        let
          g = guests.${name};
          p = "guests.${name}";
          ip = u.parseIPv4 g.address;
          tap = g.tap or "vm-${name}";
          hostName = g.host;
          hostOk = hostSet ? ${hostName};
        in
        optional (elem name planWords) "${p}: ${name} is a word the plan gives a meaning to (an allow source or a lab name); choose another guest name"
        ++ optional (!hostOk) "${p}.host: ${show hostName} is not a host in the inventory (hosts: ${u.showList hostNames})"
        ++ optional (hostOk && hosts.${hostName}.role != "hypervisor") "${p}.host: ${hostName} is not a hypervisor (role = ${toJSON hosts.${hostName}.role})"
        ++ (
          if !(u.inCIDR cidr ip) then
            [ "${p}.address: ${g.address} is outside networks.guests.cidr ${guestNet.cidr}" ]
          else
            edgeErrors "${p}.address" ip g.address cidr guestNet.cidr
            ++ optional (ip == gatewayIp) "${p}.address: ${g.address} is the gateway's address"
        )
        ++ optional (
          g ? mac && match "[0-9a-f][26ae]:.*" g.mac == null
        ) "${p}.mac: ${g.mac} is not a locally administered unicast address (second hex digit 2, 6, a or e)"
        ++ optional (stringLength tap > 15) "${p}.tap: ${toJSON tap} is longer than 15 characters (shorten the guest name or set guests.${name}.tap)"
        ++ optional (tap == bridge) "${p}.tap: ${tap} is also the guest bridge's name"
        ++ optional (elem tap lanInterfaces) "${p}.tap: ${tap} is also a host's lan_interface"
        ++ optional (elem tap ifReserved) "${p}.tap: ${tap} is a name the kernel uses"
        ++ map (s: "${p}.services: ${s} is listed twice") (u.duplicates g.services)
        ++ concatLists (
          u.imap0 (
            i: r:
            let
              q = "${p}.routes[${toString i}]";
            in
            optional (notServed name r.port "tcp") "${q}.port: ${toString r.port}/tcp is not a port of this guest's services (${servedList name})"
            ++ optional (guestSet ? ${r.name} && r.name != name) "${q}.name: ${r.name} clashes with guest ${r.name} (its DNS name)"
            ++ optional (hostSet ? ${r.name}) "${q}.name: ${r.name} clashes with host ${r.name}"
            ++ optional (stringLength r.name + 1 + stringLength domain > 253) "${q}.name: ${r.name}.${domain} is longer than 253 characters"
            ++ optional (proxies == [ ]) "${q}: no guest runs an ingress (${u.showList alternatives.ingressServices}), so nothing serves this route"
          ) (g.routes or [ ])
        )
        ++ concatLists (
          u.imap0 (
            i: a:
            let
              q = "${p}.allow[${toString i}]";
              proto = a.proto or "tcp";
            in
            concatLists (
              u.imap0 (
                j: s:
                optional (!(elem s [ "lan" "guests" ] || guestSet ? ${s} || hostSet ? ${s})) "${q}.from[${toString j}]: ${show s} is not a guest, a host, \"guests\" or \"lan\""
              ) a.from
            )
            ++ optional (notServed name a.port proto) "${q}.port: ${toString a.port}/${proto} is not a port of this guest's services (${servedList name})"
          ) (g.allow or [ ])
        )
        ++ concatLists (
          u.imap0 (
            i: d:
            let
              q = "${p}.databases[${toString i}]";
            in
            optional (elem d.name pgReserved || isPrefixOf "pg_" d.name) "${q}.name: ${d.name} is a name PostgreSQL reserves or gives a meaning to; choose another"
            ++ optional (!(guestSet ? ${d.server} && elem "postgresql" guests.${d.server}.services)) "${q}.server: ${show d.server} is not a guest running postgresql (${u.showList pgServers})"
            ++ optional (d.server == name) "${q}.server: a guest cannot own a database on itself through the network"
          ) (g.databases or [ ])
        )
        ++ concatLists (
          u.imap0 (
            i: e:
            let
              q = "${p}.public[${toString i}]";
            in
            optional (notServed name e.port e.proto) "${q}.port: ${toString e.port}/${e.proto} is not a port of this guest's services (${servedList name})"
            ++ optional (relay == null) "${q}: no host has role = \"relay\", so nothing forwards this port from the internet"
            ++ optional (relay != null && e.proto == "tcp" && e.port == 22) "${q}.port: 22/tcp is the relay's own SSH port"
            ++ optional (
              relayWg != null && e.proto == "udp" && e.port == (relayWg.port or null)
            ) "${q}.port: ${toString e.port}/udp is the relay's WireGuard port"
            ++ optional (
              relay != null && hostOk && (hosts.${hostName}.wireguard or { }).relay or null != relay
            ) "${q}: guests.${name}.host ${hostName} does not dial the relay ${relay} (set hosts.${hostName}.wireguard.relay), so nothing reaches this port"
          ) (g.public or [ ])
        )
      ) guestNames;

      # Everything that must be unique across guests.
      validGuests = guestNames;
      ownerOf = list: v: (filter (x: x.value == v) list);
      dupErrors =
        what: list: msg:
        map (v: let o = ownerOf list v; in msg (builtins.elemAt o 1) (head o)) (u.duplicates (map (x: x.value) list));
      addrs = map (n: { owner = n; value = guests.${n}.address; }) validGuests;
      macs = map (n: { owner = n; value = guests.${n}.mac or (u.macFor n); }) validGuests;
      taps = map (n: { owner = n; value = guests.${n}.tap or "vm-${n}"; }) validGuests;
      allRoutes = concatMap (n: map (r: { guest = n; name = r.name; path = r.path or "/"; }) (guests.${n}.routes or [ ])) validGuests;
      routeOwners = builtins.groupBy (r: r.name) allRoutes;
      dbs = concatMap (n: map (d: { owner = n; value = d.name; }) (guests.${n}.databases or [ ])) validGuests;
      publics = concatMap (
        n: map (e: { owner = n; value = "${toString e.port}/${e.proto}"; }) (guests.${n}.public or [ ])
      ) validGuests;
      crossErrors =
        dupErrors "address" addrs (a: b: "guests.${showKey a.owner}.address: ${a.value} is also the address of guests.${showKey b.owner}")
        ++ dupErrors "mac" macs (a: b: "guests.${showKey a.owner}.mac: ${a.value} is also the MAC of guests.${showKey b.owner}")
        ++ dupErrors "tap" taps (a: b: "guests.${showKey a.owner}.tap: ${a.value} is also the tap of guests.${showKey b.owner}")
        ++ concatMap (
          rn:
          let
            owners = u.uniqueOrdered (map (r: r.guest) routeOwners.${rn});
            paths = map (r: r.path) routeOwners.${rn};
          in
          optional (length owners > 1) "guests.${builtins.elemAt owners 1}.routes: route name ${rn} is already served by guests.${head owners}"
          ++ optionals (length owners == 1) (map (pa: "guests.${head owners}.routes: route ${rn} path ${pa} is listed twice") (u.duplicates paths))
        ) (attrNames routeOwners)
        ++ dupErrors "database" dbs (a: b: "guests.${showKey a.owner}.databases: database ${a.value} is also owned by guests.${showKey b.owner}")
        ++ dupErrors "public" publics (a: b: "guests.${showKey a.owner}.public: port ${a.value} is also forwarded to guests.${showKey b.owner}");

      # The engine (docs/incus.md): a hypervisor runs its guests with microvm.nix or Incus;
      # the keys of one engine mean nothing to the other, so they are refused, not ignored.
      engineOf = h: if hostSet ? ${h} then hosts.${h}.engine or "microvm" else "microvm";
      incusErrors =
        concatMap (
          h: optional (hosts.${h} ? engine && hosts.${h}.role != "hypervisor") "hosts.${h}.engine: only a hypervisor runs guests; remove it"
        ) hostNames
        ++ concatMap (
          name:
          let
            g = guests.${name};
            p = "guests.${name}";
            incus = engineOf g.host == "incus";
          in
          optional (g ? kind && !incus) "${p}.kind: hosts.${g.host} runs microvm.nix guests (every one a VM); kind needs engine = \"incus\" there"
          ++ optional (g ? hypervisor && incus) "${p}.hypervisor: hosts.${g.host} has engine = \"incus\", which runs its own QEMU; remove it"
        ) guestNames;
    in
    topology ++ userErrors ++ certErrors ++ netErrors ++ hostErrors ++ guestErrors ++ crossErrors
    ++ incusErrors ++ alternatives.errors inv;
in
    if shape != [ ] then shape else rules;
}
