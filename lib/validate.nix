# Inventory validation: returns the list of problems, each "<key>: <what is wrong>".
# The plan throws the first one, prefixed with the file name. tools/homestack/inventory.py
# implements the same rules in Python (one line per problem); tests/inventories/bad/ holds
# a corpus that both must reject, naming the same key.
let
  u = import ./util.nix;
  services = import ./services.nix;
  inherit (builtins)
    attrNames
    concatLists
    elem
    filter
    isAttrs
    isBool
    isInt
    isList
    isString
    length
    match
    stringLength
    ;
  inherit (u) concatMap optional imap0;

  topKeys = [ "domain" "certificates" "users" "networks" "hosts" "guests" ];
  certKeys = [ "mode" "include_network" "acme_email" ];
  userKeys = [ "admin" "ssh_keys" "age_key" ];
  guestNetKeys = [ "cidr" "gateway" "bridge" ];
  tunnelKeys = [ "cidr" ];
  hostKeys = [ "role" "system" "target" "host_key" "age_key" "lan_interface" "zfs" "wireguard" "public_address" ];
  zfsKeys = [ "pool" "host_id" ];
  wgKeys = [ "relay" "address" "public_key" "port" ];
  guestKeys = [ "host" "address" "vcpu" "memory" "services" "state_size" "host_key" "age_key" "routes" "allow" "databases" "public" "ports" "mac" "tap" "hypervisor" "egress" ];
  routeKeys = [ "name" "port" "path" "h2c" ];
  allowKeys = [ "from" "port" "proto" ];
  dbKeys = [ "name" "server" ];
  portKeys = [ "port" "proto" ];
  egressKeys = [ "to" "port" "proto" ];
  egressTargets = [ "internet" "lan" ];
  roles = [ "hypervisor" "relay" ];
  systems = [ "x86_64-linux" "aarch64-linux" ];
  # Hypervisors with virtiofs, which the guests' state share needs.
  hypervisors = [ "cloud-hypervisor" "qemu" "crosvm" ];

  label = "[a-z]([a-z0-9-]{0,61}[a-z0-9])?";
  isName = s: isString s && match label s != null;
  isDomain = s: isString s && match "${label}(\\.${label})*" s != null;
  isIdent = s: isString s && match "[a-z_][a-z0-9_]{0,62}" s != null;
  isPort = p: isInt p && p >= 1 && p <= 65535;
  isSshKey = s: isString s && match "ssh-ed25519 [A-Za-z0-9+/]+=* ?.*" s != null;
  isAnySshKey = s: isString s && match "(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com) [A-Za-z0-9+/]+=* ?.*" s != null;
  isAgeKey = s: isString s && match "age1[02-9ac-hj-np-z]{58}" s != null;
  isWgKey = s: isString s && match "[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=" s != null;
  isMac = s: isString s && match "[0-9a-f]{2}(:[0-9a-f]{2}){5}" s != null;
  showPort = p: if isInt p then toString p else builtins.toJSON p;
  typeOf = v: if isAttrs v then "a table" else if isList v then "a list" else builtins.typeOf v;
in
inv:
let
  unknownKeys =
    prefix: allowed: attrs:
    map (k: "${prefix}${k}: unknown key (expected one of: ${u.showList allowed})") (
      filter (k: !(elem k allowed)) (attrNames attrs)
    );
  required = prefix: attrs: keys: map (k: "${prefix}${k}: missing required key") (filter (k: !(attrs ? ${k})) keys);
  check = cond: msg: optional (!cond) msg;
  tableAt = key: v: optional (!(isAttrs v)) "${key}: must be a table, not ${typeOf v}";

  domain = inv.domain or null;
  guestNet = inv.networks.guests or { };
  cidr = u.parseCIDR (guestNet.cidr or null);
  tunnelCidr = u.parseCIDR (inv.networks.tunnel.cidr or null);
  gatewayIp = u.parseIPv4 (guestNet.gateway or null);
  hosts = if isAttrs (inv.hosts or null) then inv.hosts else { };
  guests = if isAttrs (inv.guests or null) then inv.guests else { };
  users = if isAttrs (inv.users or null) then inv.users else { };
  guestNames = attrNames guests;
  hostNames = attrNames hosts;

  top =
    unknownKeys "" topKeys inv
    ++ required "" inv [ "domain" "users" "networks" "hosts" "guests" ]
    ++ concatMap (k: optional (inv ? ${k} && !(isAttrs inv.${k})) "${k}: must be a table, not ${typeOf inv.${k}}") [ "networks" "hosts" "guests" ]
    ++ optional (inv ? domain && !(isDomain domain)) "domain: ${builtins.toJSON domain} is not a lowercase DNS name";

  certs =
    let
      c = inv.certificates or { };
      mode = c.mode or "private-ca";
    in
    tableAt "certificates" c
    ++ optionals' (isAttrs c) (
      unknownKeys "certificates." certKeys c
      ++ check (elem mode [ "private-ca" "acme-dns01" ]) "certificates.mode: ${builtins.toJSON mode} is not one of private-ca, acme-dns01"
      ++ check (isBool (c.include_network or false)) "certificates.include_network: must be true or false"
      ++ optional (mode == "acme-dns01" && !(isString (c.acme_email or null))) "certificates.acme_email: missing required key (acme-dns01 mode needs an e-mail for Let's Encrypt)"
    );

  optionals' = cond: xs: if cond then xs else [ ];

  userErrors =
    tableAt "users" (inv.users or { })
    ++ concatMap (
      name:
      let
        usr = users.${name};
        p = "users.${name}";
      in
      if !(isAttrs usr) then
        [ "${p}: must be a table, not ${typeOf usr}" ]
      else
        check (isName name) "${p}: user name must be lowercase letters, digits and dashes"
        ++ unknownKeys "${p}." userKeys usr
        ++ check (isBool (usr.admin or false)) "${p}.admin: must be true or false"
        ++ (
          if !(isList (usr.ssh_keys or [ ])) then
            [ "${p}.ssh_keys: must be a list of SSH public keys" ]
          else
            concatLists (imap0 (i: k: check (isAnySshKey k) "${p}.ssh_keys[${toString i}]: not an SSH public key") (usr.ssh_keys or [ ]))
        )
        ++ optional (usr ? age_key && !(isAgeKey usr.age_key)) "${p}.age_key: ${builtins.toJSON usr.age_key} is not an age recipient (age1…)"
    ) (attrNames users)
    ++ optional (
      isAttrs (inv.users or null) && filter (n: isAttrs users.${n} && (users.${n}.admin or false) == true) (attrNames users) == [ ]
    ) "users: no user has admin = true (someone must be able to log in and decrypt)";

  netErrors =
    optionals' (isAttrs (inv.networks or null)) (
      unknownKeys "networks." [ "guests" "tunnel" ] inv.networks
      ++ (
        if !(inv.networks ? guests) then
          [ "networks.guests: missing required key" ]
        else
          unknownKeys "networks.guests." guestNetKeys guestNet
          ++ required "networks.guests." guestNet [ "cidr" "gateway" ]
          ++ optional (guestNet ? cidr && cidr == null) "networks.guests.cidr: ${builtins.toJSON guestNet.cidr} is not an IPv4 CIDR like 192.168.100.0/24"
          ++ optional (cidr != null && cidr.address != cidr.network) "networks.guests.cidr: ${guestNet.cidr} has host bits set (did you mean ${u.formatIPv4 cidr.network}/${toString cidr.prefix}?)"
          ++ optional (cidr != null && cidr.prefix > 30) "networks.guests.cidr: /${toString cidr.prefix} leaves no room for guests"
          ++ optional (guestNet ? gateway && gatewayIp == null) "networks.guests.gateway: ${builtins.toJSON guestNet.gateway} is not an IPv4 address"
          ++ optional (
            gatewayIp != null && cidr != null && !(u.inCIDR cidr gatewayIp)
          ) "networks.guests.gateway: ${guestNet.gateway} is outside networks.guests.cidr ${guestNet.cidr}"
          ++ optional (
            guestNet ? bridge && !(isString guestNet.bridge && match "[a-zA-Z0-9_.-]{1,15}" guestNet.bridge != null)
          ) "networks.guests.bridge: ${builtins.toJSON guestNet.bridge} is not an interface name of at most 15 characters"
      )
      ++ optionals' (inv.networks ? tunnel) (
        unknownKeys "networks.tunnel." tunnelKeys inv.networks.tunnel
        ++ required "networks.tunnel." inv.networks.tunnel [ "cidr" ]
        ++ optional (inv.networks.tunnel ? cidr && tunnelCidr == null) "networks.tunnel.cidr: ${builtins.toJSON inv.networks.tunnel.cidr} is not an IPv4 CIDR"
        ++ optional (
          tunnelCidr != null && cidr != null && (u.inCIDR cidr tunnelCidr.network || u.inCIDR tunnelCidr cidr.network)
        ) "networks.tunnel.cidr: ${inv.networks.tunnel.cidr} overlaps networks.guests.cidr ${guestNet.cidr}"
      )
    );

  hostErrors = concatMap (
    name:
    let
      h = hosts.${name};
      p = "hosts.${name}";
      role = h.role or null;
      wg = h.wireguard or { };
      wgIp = u.parseIPv4 (wg.address or null);
    in
    if !(isAttrs h) then
      [ "${p}: must be a table, not ${typeOf h}" ]
    else
      check (isName name) "${p}: host name must be lowercase letters, digits and dashes"
      ++ optional (guests ? ${name}) "${p}: the name is also used by guests.${name}"
      ++ unknownKeys "${p}." hostKeys h
      ++ required "${p}." h [ "role" "system" "target" ]
      ++ optional (h ? role && !(elem role roles)) "${p}.role: ${builtins.toJSON role} is not one of ${u.showList roles}"
      ++ optional (h ? system && !(elem h.system systems)) "${p}.system: ${builtins.toJSON h.system} is not one of ${u.showList systems}"
      ++ optional (h ? target && !(isString h.target && h.target != "")) "${p}.target: must be an SSH destination like root@host"
      ++ optional (h ? host_key && !(isSshKey h.host_key)) "${p}.host_key: not an ssh-ed25519 public key"
      ++ optional (h ? age_key && !(isAgeKey h.age_key)) "${p}.age_key: ${builtins.toJSON h.age_key} is not an age recipient (age1…)"
      ++ optional (role == "hypervisor" && !(h ? lan_interface)) "${p}.lan_interface: missing required key (hypervisors NAT the guest network out of it)"
      ++ optional (role == "hypervisor" && !(h ? zfs)) "${p}.zfs: missing required key (hypervisors keep each guest's state on a ZFS dataset)"
      ++ optional (
        h ? lan_interface && !(isString h.lan_interface && match "[a-zA-Z0-9_.-]{1,15}" h.lan_interface != null)
      ) "${p}.lan_interface: ${builtins.toJSON h.lan_interface} is not an interface name of at most 15 characters"
      ++ optional (role == "relay" && !(h ? public_address)) "${p}.public_address: missing required key (the relay's public IPv4 address)"
      ++ optional (
        h ? public_address && u.parseIPv4 h.public_address == null
      ) "${p}.public_address: ${builtins.toJSON h.public_address} is not an IPv4 address"
      ++ optionals' (h ? zfs) (
        if !(isAttrs h.zfs) then
          [ "${p}.zfs: must be a table" ]
        else
          unknownKeys "${p}.zfs." zfsKeys h.zfs
          ++ required "${p}.zfs." h.zfs [ "pool" "host_id" ]
          ++ optional (h.zfs ? host_id && !(isString h.zfs.host_id && match "[0-9a-f]{8}" h.zfs.host_id != null)) "${p}.zfs.host_id: ${builtins.toJSON h.zfs.host_id} must be 8 lowercase hex digits (head -c4 /dev/urandom | od -An -tx4)"
          ++ optional (h.zfs ? pool && !(isString h.zfs.pool && match "[A-Za-z][A-Za-z0-9_.:-]*" h.zfs.pool != null)) "${p}.zfs.pool: ${builtins.toJSON h.zfs.pool} is not a ZFS pool name"
      )
      ++ optionals' (h ? wireguard) (
        if !(isAttrs wg) then
          [ "${p}.wireguard: must be a table" ]
        else
          unknownKeys "${p}.wireguard." wgKeys wg
          ++ required "${p}.wireguard." wg [ "address" "public_key" ]
          ++ optional (!(inv.networks ? tunnel)) "${p}.wireguard: needs networks.tunnel.cidr"
          ++ optional (wg ? address && wgIp == null) "${p}.wireguard.address: ${builtins.toJSON wg.address} is not an IPv4 address"
          ++ optional (
            wgIp != null && tunnelCidr != null && !(u.inCIDR tunnelCidr wgIp)
          ) "${p}.wireguard.address: ${wg.address} is outside networks.tunnel.cidr ${inv.networks.tunnel.cidr}"
          ++ optional (wg ? public_key && !(isWgKey wg.public_key)) "${p}.wireguard.public_key: not a WireGuard public key (44 characters of base64)"
          ++ optional (wg ? port && !(isPort wg.port)) "${p}.wireguard.port: ${showPort wg.port} is not a port (1-65535)"
          ++ optional (role == "relay" && !(wg ? port)) "${p}.wireguard.port: missing required key (the relay listens on it)"
          ++ optional (
            wg ? relay && !(isString wg.relay && hosts ? ${wg.relay} && isAttrs hosts.${wg.relay} && (hosts.${wg.relay}.role or null) == "relay")
          ) "${p}.wireguard.relay: ${builtins.toJSON wg.relay} is not a host with role = \"relay\""
          ++ optional (role == "hypervisor" && !(wg ? relay)) "${p}.wireguard.relay: missing required key (the relay host this hypervisor dials)"
      )
  ) hostNames
  ++ u.concatMap (
    a: [ "hosts.${a}.wireguard.address: ${hosts.${a}.wireguard.address} is used twice in networks.tunnel" ]
  ) (
    u.duplicates (
      map (n: hosts.${n}.wireguard.address) (filter (n: isAttrs hosts.${n} && isAttrs (hosts.${n}.wireguard or null) && isString (hosts.${n}.wireguard.address or null)) hostNames)
    )
  );

  routesOf = g: if isAttrs guests.${g} && isList (guests.${g}.routes or null) then guests.${g}.routes else [ ];
  portsOf =
    g:
    let
      gs = guests.${g};
      fromServices = concatMap (s: if isString s then (services.${s} or { ports = [ ]; }).ports else [ ]) (if isList (gs.services or null) then gs.services else [ ]);
      extra = if isList (gs.ports or null) then filter isAttrs gs.ports else [ ];
    in
    map (p: "${builtins.toJSON (p.port or 0)}/${if isString (p.proto or null) then p.proto else builtins.toJSON (p.proto or "tcp")}") (fromServices ++ extra);
  # Guests whose services are all known; port and server checks skip the others, so one
  # misspelt service is reported once, not again for every port and database using it.
  knownServices = g: isAttrs guests.${g} && isList (guests.${g}.services or null) && builtins.all (s: isString s && services ? ${s}) guests.${g}.services;
  pgServers = filter (g: isAttrs guests.${g} && elem "postgresql" (guests.${g}.services or [ ])) guestNames;
  pgOrUnknown = filter (g: !(knownServices g) || elem "postgresql" guests.${g}.services) guestNames;
  sources = [ "lan" "guests" ] ++ guestNames ++ hostNames;

  portErrors =
    p: entry: needProto:
    if !(isAttrs entry) then
      [ "${p}: must be a table like { port = 443, proto = \"tcp\" }" ]
    else
      optional (!(entry ? port)) "${p}.port: missing required key"
      ++ optional (entry ? port && !(isPort entry.port)) "${p}.port: ${showPort entry.port} is not a port (1-65535)"
      ++ optional (needProto && !(entry ? proto)) "${p}.proto: missing required key"
      ++ optional (entry ? proto && !(elem entry.proto [ "tcp" "udp" ])) "${p}.proto: ${builtins.toJSON entry.proto} is not tcp or udp";

  listOf =
    p: v: f:
    if !(isList v) then [ "${p}: must be a list" ] else concatLists (imap0 (i: e: f "${p}[${toString i}]" e) v);

  guestErrors = concatMap (
    name:
    let
      g = guests.${name};
      p = "guests.${name}";
      ip = u.parseIPv4 (g.address or null);
      hostName = g.host or null;
      tap = g.tap or "vm-${name}";
      ports = portsOf name;
      portsKnown = knownServices name;
    in
    if !(isAttrs g) then
      [ "${p}: must be a table, not ${typeOf g}" ]
    else
      check (isName name) "${p}: guest name must be lowercase letters, digits and dashes"
      ++ unknownKeys "${p}." guestKeys g
      ++ required "${p}." g [ "host" "address" "vcpu" "memory" "services" "state_size" ]
      ++ optional (
        g ? host && !(isString hostName && hosts ? ${hostName})
      ) "${p}.host: ${builtins.toJSON hostName} is not a host in the inventory (hosts: ${u.showList hostNames})"
      ++ optional (
        g ? host && isString hostName && hosts ? ${hostName} && isAttrs hosts.${hostName} && (hosts.${hostName}.role or null) != "hypervisor"
      ) "${p}.host: ${hostName} is not a hypervisor (role = ${builtins.toJSON (hosts.${hostName}.role or null)})"
      ++ optional (g ? address && ip == null) "${p}.address: ${builtins.toJSON g.address} is not an IPv4 address"
      ++ optional (
        ip != null && cidr != null && !(u.inCIDR cidr ip)
      ) "${p}.address: ${g.address} is outside networks.guests.cidr ${guestNet.cidr}"
      ++ optional (
        ip != null && cidr != null && u.inCIDR cidr ip && (ip == cidr.network || ip == cidr.network + cidr.size - 1)
      ) "${p}.address: ${g.address} is the network or broadcast address of ${guestNet.cidr}"
      ++ optional (ip != null && ip == gatewayIp) "${p}.address: ${g.address} is the gateway's address"
      ++ optional (g ? vcpu && !(isInt g.vcpu && g.vcpu >= 1 && g.vcpu <= 64)) "${p}.vcpu: ${builtins.toJSON g.vcpu} must be a whole number from 1 to 64"
      ++ optional (g ? memory && !(isInt g.memory && g.memory >= 128)) "${p}.memory: ${builtins.toJSON g.memory} must be a whole number of MiB, at least 128"
      ++ optional (g ? state_size && !(isInt g.state_size && g.state_size >= 16)) "${p}.state_size: ${builtins.toJSON g.state_size} must be a whole number of MiB, at least 16 (the guest's SSH host key lives there)"
      ++ optional (g ? host_key && !(isSshKey g.host_key)) "${p}.host_key: not an ssh-ed25519 public key"
      ++ optional (g ? age_key && !(isAgeKey g.age_key)) "${p}.age_key: ${builtins.toJSON g.age_key} is not an age recipient (age1…)"
      ++ optional (g ? hypervisor && !(elem g.hypervisor hypervisors)) "${p}.hypervisor: ${builtins.toJSON g.hypervisor} is not one of ${u.showList hypervisors}"
      ++ optional (g ? mac && !(isMac g.mac)) "${p}.mac: ${builtins.toJSON g.mac} is not a lowercase MAC address like 02:00:00:00:00:01"
      ++ optional (
        g ? mac && isMac g.mac && match "[0-9a-f][26ae]:.*" g.mac == null
      ) "${p}.mac: ${g.mac} is not a locally administered unicast address (second hex digit 2, 6, a or e)"
      ++ optional (!(isString tap && match "[a-zA-Z0-9_.-]+" tap != null)) "${p}.tap: ${builtins.toJSON tap} is not an interface name"
      ++ optional (isString tap && stringLength tap > 15) "${p}.tap: ${builtins.toJSON tap} is longer than 15 characters (shorten the guest name or set guests.${name}.tap)"
      ++ (
        if !(isList (g.services or [ ])) then
          [ "${p}.services: must be a list of service names" ]
        else
          concatLists (
            imap0 (
              i: s: check (isString s && services ? ${s}) "${p}.services[${toString i}]: ${builtins.toJSON s} is not a known service (${u.showList (attrNames services)})"
            ) (g.services or [ ])
          )
      )
      ++ optionals' (g ? ports) (listOf "${p}.ports" g.ports (q: e: portErrors q e true ++ optionals' (isAttrs e) (unknownKeys "${q}." portKeys e)))
      ++ optionals' (g ? public) (listOf "${p}.public" g.public (q: e: portErrors q e true ++ optionals' (isAttrs e) (unknownKeys "${q}." portKeys e ++ optional (isPort (e.port or null) && portsKnown && isString (e.proto or "tcp") && !(elem "${toString e.port}/${e.proto or "tcp"}" ports)) "${q}.port: ${toString e.port}/${e.proto or "tcp"} is not a port of this guest's services (${u.showList ports})")))
      ++ optionals' (g ? routes) (
        listOf "${p}.routes" g.routes (
          q: r:
          if !(isAttrs r) then
            [ "${q}: must be a table like { name = \"id\", port = 1411 }" ]
          else
            unknownKeys "${q}." routeKeys r
            ++ required "${q}." r [ "name" "port" ]
            ++ optional (r ? name && !(isName r.name)) "${q}.name: ${builtins.toJSON r.name} is not a DNS label"
            ++ optional (r ? port && !(isPort r.port)) "${q}.port: ${showPort r.port} is not a port (1-65535)"
            ++ optional (
              portsKnown && isPort (r.port or null) && !(elem "${toString r.port}/tcp" ports)
            ) "${q}.port: ${toString r.port}/tcp is not a port of this guest's services (${u.showList ports})"
            ++ optional (r ? path && !(isString r.path && u.hasPrefix "/" r.path)) "${q}.path: must start with /"
            ++ optional (r ? h2c && !(isBool r.h2c)) "${q}.h2c: must be true or false"
            ++ optional (isName (r.name or null) && guests ? ${r.name} && r.name != name) "${q}.name: ${r.name} clashes with guest ${r.name} (its DNS name)"
        )
      )
      ++ optionals' (g ? allow) (
        listOf "${p}.allow" g.allow (
          q: a:
          if !(isAttrs a) then
            [ "${q}: must be a table like { from = [\"lan\"], port = 443, proto = \"tcp\" }" ]
          else
            unknownKeys "${q}." allowKeys a
            ++ portErrors q a false
            ++ required "${q}." a [ "from" ]
            ++ (
              if a ? from && !(isList a.from) then
                [ "${q}.from: must be a list of sources" ]
              else
                concatLists (
                  imap0 (
                    i: s: check (isString s && elem s sources) "${q}.from[${toString i}]: ${builtins.toJSON s} is not a guest, a host, \"guests\" or \"lan\""
                  ) (a.from or [ ])
                )
            )
            ++ optional (
              portsKnown && isPort (a.port or null) && isString (a.proto or "tcp") && !(elem "${toString a.port}/${a.proto or "tcp"}" ports)
            ) "${q}.port: ${toString a.port}/${a.proto or "tcp"} is not a port of this guest's services (${u.showList ports})"
        )
      )
      ++ optionals' (g ? egress) (
        listOf "${p}.egress" g.egress (
          q: e:
          portErrors q e false
          ++ optionals' (isAttrs e) (
            unknownKeys "${q}." egressKeys e
            ++ required "${q}." e [ "to" ]
            ++ optional (e ? to && !(elem e.to egressTargets)) "${q}.to: ${builtins.toJSON e.to} is not one of ${u.showList egressTargets}"
          )
        )
      )
      ++ optionals' (g ? databases) (
        listOf "${p}.databases" g.databases (
          q: d:
          if !(isAttrs d) then
            [ "${q}: must be a table like { name = \"app\", server = \"db\" }" ]
          else
            unknownKeys "${q}." dbKeys d
            ++ required "${q}." d [ "name" "server" ]
            ++ optional (d ? name && !(isIdent d.name)) "${q}.name: ${builtins.toJSON d.name} is not a PostgreSQL identifier (lowercase letters, digits, _)"
            ++ optional (
              d ? server && !(elem d.server pgOrUnknown)
            ) "${q}.server: ${builtins.toJSON d.server} is not a guest running postgresql (${u.showList pgServers})"
            ++ optional ((d.server or null) == name) "${q}.server: a guest cannot own a database on itself through the network"
        )
      )
  ) guestNames;

  # Cross-guest checks.
  validGuests = filter (n: isAttrs guests.${n}) guestNames;
  addrOwners = filter (n: isString (guests.${n}.address or null)) validGuests;
  macs = map (n: { name = n; mac = guests.${n}.mac or (u.macFor n); }) validGuests;
  taps = map (n: { name = n; tap = guests.${n}.tap or "vm-${n}"; }) validGuests;
  allRoutes = concatMap (
    n: map (r: { guest = n; name = r.name or ""; path = r.path or "/"; }) (filter isAttrs (routesOf n))
  ) validGuests;
  routeOwners = builtins.groupBy (r: r.name) allRoutes;
  allDbs = concatMap (n: map (d: { guest = n; name = d.name or ""; }) (filter isAttrs (if isList (guests.${n}.databases or null) then guests.${n}.databases else [ ]))) validGuests;
  firstWith = attr: v: list: builtins.head (filter (x: x.${attr} == v) list);

  crossErrors =
    map (a: "guests.${(builtins.elemAt (filter (n: guests.${n}.address == a) addrOwners) 1)}.address: ${a} is also the address of guests.${builtins.head (filter (n: guests.${n}.address == a) addrOwners)}") (
      u.duplicates (map (n: guests.${n}.address) addrOwners)
    )
    ++ map (m: "guests.${(builtins.elemAt (filter (x: x.mac == m) macs) 1).name}.mac: ${m} is also the MAC of guests.${(firstWith "mac" m macs).name}") (u.duplicates (map (x: x.mac) macs))
    ++ map (t: "guests.${(builtins.elemAt (filter (x: x.tap == t) taps) 1).name}.tap: ${t} is also the tap of guests.${(firstWith "tap" t taps).name}") (u.duplicates (map (x: x.tap) taps))
    ++ concatMap (
      rn:
      let
        owners = u.uniqueOrdered (map (r: r.guest) routeOwners.${rn});
        paths = map (r: r.path) routeOwners.${rn};
      in
      optional (length owners > 1) "guests.${builtins.elemAt owners 1}.routes: route name ${rn} is already served by guests.${builtins.head owners}"
      ++ u.optionals (length owners == 1) (map (pa: "guests.${builtins.head owners}.routes: route ${rn} path ${pa} is listed twice") (u.duplicates paths))
    ) (attrNames routeOwners)
    ++ map (d: "guests.${(builtins.elemAt (filter (x: x.name == d) allDbs) 1).guest}.databases: database ${d} is also owned by guests.${(firstWith "name" d allDbs).guest}") (u.duplicates (map (x: x.name) allDbs));
in
top
++ certs
++ userErrors
++ netErrors
++ hostErrors
++ guestErrors
++ (if guestErrors == [ ] && hostErrors == [ ] then crossErrors else [ ])
