# The plan: every value derived from a (valid) inventory. Rendered artifacts are added
# by default.nix. See docs/plan.md for the shape.
let
  u = import ./util.nix;
  services = import ./services.nix;
  secretsLib = import ./secrets.nix;
  alternatives = import ./alternatives.nix;
  inherit (builtins)
    attrNames
    elem
    filter
    head
    length
    listToAttrs
    ;
  inherit (u) concatMap optional;
in
inv:
let
  domain = inv.domain;
  net = inv.networks.guests;
  cidr = u.parseCIDR net.cidr;
  gateway = net.gateway;
  prefix = cidr.prefix;
  certCfg = inv.certificates or { };

  hostNames = attrNames inv.hosts;
  guestNames = attrNames inv.guests;
  hypervisorNames = filter (h: inv.hosts.${h}.role == "hypervisor") hostNames;
  relayNames = filter (h: inv.hosts.${h}.role == "relay") hostNames;

  users = builtins.mapAttrs (name: usr: {
    inherit name;
    admin = usr.admin or false;
    sshKeys = usr.ssh_keys or [ ];
    ageKey = usr.age_key or null;
  }) inv.users;
  admins = filter (n: users.${n}.admin) (attrNames users);

  guestsOfHost = builtins.groupBy (g: inv.guests.${g}.host) guestNames;

  hosts = builtins.mapAttrs (name: h: {
    inherit name;
    inherit (h) role system target;
    hostKey = h.host_key or null;
    ageKey = h.age_key or null;
    lanInterface = h.lan_interface or null;
    publicAddress = h.public_address or null;
    # What runs this hypervisor's guests (docs/incus.md); null on a relay.
    engine = if h.role == "hypervisor" then h.engine or "microvm" else null;
    zfs =
      if h ? zfs then
        {
          inherit (h.zfs) pool;
          hostId = h.zfs.host_id;
        }
      else
        null;
    wireguard =
      if h ? wireguard then
        {
          inherit (h.wireguard) address;
          publicKey = h.wireguard.public_key;
          port = h.wireguard.port or null;
          relay = h.wireguard.relay or null;
          interface = "wg-homestack";
        }
      else
        null;
    guests = guestsOfHost.${name} or [ ];
    secretsFile = "secrets/${name}.yaml";
  }) inv.hosts;

  servicePorts = g: concatMap (s: map (p: p // { service = s; }) services.${s}.ports) (inv.guests.${g}.services);
  extraPorts = g: map (p: rec { inherit (p) port; proto = p.proto or "tcp"; name = "${toString port}/${proto}"; service = "extra"; }) (inv.guests.${g}.ports or [ ]);

  routesOfGuest =
    g:
    map (r: rec {
      inherit (r) name port;
      fqdn = "${r.name}.${domain}";
      guest = g;
      address = inv.guests.${g}.address;
      path = r.path or "/";
      h2c = r.h2c or false;
      upstream = "${address}:${toString r.port}";
    }) (inv.guests.${g}.routes or [ ]);
  # Each guest's routes, databases and needs, computed once: the plan lists them per guest
  # and all together, and the flows and the boot order use them again.
  routesBy = builtins.mapAttrs (g: _: routesOfGuest g) inv.guests;
  routes = concatMap (g: routesBy.${g}) guestNames;
  routeNameSet = u.toSet (map (r: r.name) routes);

  # The guest running the ingress (caddy or traefik) and the mesh server (lib/alternatives.nix).
  choice = alternatives.choice inv;
  proxy = choice.proxy;
  proxyAddress = if proxy == null then null else inv.guests.${proxy}.address;
  dnsGuests = filter (g: elem "dnsmasq" inv.guests.${g}.services) guestNames;

  databasesOfGuest =
    g:
    map (d: {
      inherit (d) name server;
      role = d.name;
      owner = g;
      ownerAddress = inv.guests.${g}.address;
      serverAddress = inv.guests.${d.server}.address;
      port = 5432;
      secretsFile = "secrets/shared/pg-${d.name}.yaml";
      secretKey = "password";
    }) (inv.guests.${g}.databases or [ ]);
  databasesBy = builtins.mapAttrs (g: _: databasesOfGuest g) inv.guests;
  databases = concatMap (g: databasesBy.${g}) guestNames;

  # A flow's source as the destination's firewall sees it: a guest by its address, the
  # relay by its tunnel address (it masquerades what it forwards), a hypervisor by the
  # gateway, and "lan" as anything outside the guest network and the tunnel.
  isRelay = h: inv.hosts ? ${h} && inv.hosts.${h}.role == "relay";
  addressOf =
    src:
    if inv.guests ? ${src} then
      inv.guests.${src}.address
    else if isRelay src then
      inv.hosts.${src}.wireguard.address or null
    else if inv.hosts ? ${src} then
      gateway
    else
      null;
  kindOf =
    src:
    if inv.guests ? ${src} then
      "guest"
    else if isRelay src then
      "relay"
    else if inv.hosts ? ${src} then
      "host"
    else
      "lan";

  flow = from: to: port: proto: reason: {
    inherit from to port proto reason;
    fromKind = kindOf from;
    fromAddress = addressOf from;
    toAddress = inv.guests.${to}.address;
  };

  # Every flow the inventory allows, explicit and implied, without duplicates.
  rawFlows =
    concatMap (
      g:
      let
        gs = inv.guests.${g};
        explicit = concatMap (
          a:
          concatMap (src: if src == "guests" then map (o: flow o g a.port (a.proto or "tcp") "guests.${g}.allow") guestNames else [ (flow src g a.port (a.proto or "tcp") "guests.${g}.allow") ]) a.from
        ) (gs.allow or [ ]);
        routeFlows = if proxy == null then [ ] else map (r: flow proxy g r.port "tcp" "route ${r.name}") (gs.routes or [ ]);
        # What the relay forwards from the internet arrives from its tunnel address.
        publicFlows = if relay == null then [ ] else map (p: flow relay.host g p.port (p.proto or "tcp") "public through ${relay.host}") (gs.public or [ ]);
        sshFlow = [ (flow gs.host g 22 "tcp" "ssh from the hypervisor") ];
        healthFlows = concatMap (
          s: map (h: flow gs.host g h.port "tcp" "health check from the hypervisor") services.${s}.health
        ) gs.services;
      in
      sshFlow ++ healthFlows ++ routeFlows ++ publicFlows ++ explicit
    ) guestNames
    ++ map (d: flow d.owner d.server 5432 "tcp" "database ${d.name}") databases;
  flowKey = f: "${f.from}>${f.to}:${toString f.port}/${f.proto}";
  allow = u.firstOfEach flowKey (filter (f: f.from != f.to) rawFlows);

  # Outbound flows: what a guest may reach outside the guest network. `to` is "internet"
  # (any public address, through the hypervisor's LAN interface), "lan" (RFC 1918 addresses
  # there) or a host (a service of the hypervisor itself, at the gateway). Everything else
  # a guest sends is dropped, by its own `output` chain and by the hypervisor.
  egressFlow = from: to: port: proto: reason: {
    inherit from to port proto reason;
    toKind = if inv.hosts ? ${to} then "host" else to;
    fromAddress = inv.guests.${from}.address;
    toAddress = if inv.hosts ? ${to} then gateway else null;
  };
  rawEgress =
    concatMap (
      g:
      let
        gs = inv.guests.${g};
        runs = s: elem s gs.services;
        both53 = why: [ (egressFlow g "internet" 53 "udp" why) (egressFlow g "internet" 53 "tcp" why) ];
      in
      # Guests keep time from their hypervisor (chrony there serves the guest network).
      [ (egressFlow g gs.host 123 "udp" "time from the hypervisor") ]
      # dnsmasq answers the domain itself and forwards every other name upstream.
      ++ u.optionals (runs "dnsmasq") (both53 "dnsmasq forwards other names upstream")
      # acme-dns01: Let's Encrypt and the Cloudflare API over HTTPS, and the DNS-01
      # propagation check, which asks the domain's authoritative servers directly.
      ++ u.optionals (builtins.any runs alternatives.ingressServices && (certCfg.mode or "private-ca") == "acme-dns01") (
        [ (egressFlow g "internet" 443 "tcp" "ACME and the Cloudflare API (acme-dns01)") ]
        ++ both53 "DNS-01 propagation check (acme-dns01)"
      )
      ++ map (e: egressFlow g e.to e.port (e.proto or "tcp") "guests.${g}.egress") (gs.egress or [ ])
    ) guestNames;
  egressKey = f: "${f.from}>${f.to}:${toString f.port}/${f.proto}";
  egress = u.firstOfEach egressKey rawEgress;

  # The mesh client on the hypervisors (NetBird's, or Tailscale's for Headscale), when the
  # inventory runs a mesh server with a route: its interface and WireGuard port, which the
  # hosts' input chains name.
  mesh =
    if choice.mesh != null && builtins.any (r: r.guest == choice.meshGuest) routes then
      alternatives.clients.${choice.mesh} // { server = choice.mesh; guest = choice.meshGuest; }
    else
      null;

  # What each host's own services accept, and from where: "lan" (its LAN interface),
  # "mesh" (the NetBird interface; NetBird's policies pick the peers), "internet" (any
  # interface but the tunnel: the relay's public side) or a guest (from the bridge).
  # Nothing else reaches a host; in particular no guest reaches a hypervisor's SSH.
  input = concatMap (
    h:
    let
      role = inv.hosts.${h}.role;
      rule = from: port: proto: reason: {
        host = h;
        inherit from port proto reason;
        fromKind = if inv.guests ? ${from} then "guest" else from;
        fromAddress = addressOf from;
      };
    in
    if role == "hypervisor" then
      [ (rule "lan" 22 "tcp" "SSH from the LAN") ]
      ++ u.optionals (mesh != null) [
        (rule "mesh" 22 "tcp" "SSH from the mesh")
        (rule "lan" mesh.port "udp" mesh.reason)
      ]
      ++ map (e: rule e.from e.port e.proto e.reason) (filter (e: e.to == h) egress)
    else
      [ (rule "internet" 22 "tcp" "SSH on the public address") ]
      ++ u.optional (inv.hosts.${h} ? wireguard && inv.hosts.${h}.wireguard ? port) (
        rule "internet" inv.hosts.${h}.wireguard.port "udp" "WireGuard from the hypervisors"
      )
  ) hostNames;

  # The guests running each service, in guestNames' order.
  runningBy = builtins.mapAttrs (_: map (x: x.g)) (
    builtins.groupBy (x: x.s) (concatMap (g: map (s: { inherit g s; }) inv.guests.${g}.services) guestNames)
  );
  running = s: runningBy.${s} or [ ];

  # What each guest's services need at run time (the catalogue's `needs`), resolved to the
  # guests that provide it. A need `through` a service (the proxy) is reached at that
  # service's guest, which routes on to the provider.
  needsOf =
    g:
    let
      gs = inv.guests.${g};
      own = gs.databases or [ ];
    in
    concatMap (
      s:
      concatMap (
        n:
        let
          providers =
            if n.ifDatabases then
              u.unique (map (d: d.server) own)
            else
              running n.service;
          portEntry = builtins.head (
            filter (p: p.name == n.port) (services.${n.service}.ports or [ ])
            ++ [ { port = 0; proto = "tcp"; } ]
          );
          # `through = "ingress"`: whichever proxy the stack runs.
          via =
            if n.through == null then [ ]
            else if n.through == "ingress" then u.optional (proxy != null) proxy
            else running n.through;
        in
        if n.ifDatabases && own == [ ] then
          [ ]
        else
          [
            {
              service = s;
              need = n.service;
              inherit (n) through why;
              inherit (portEntry) port proto;
              inherit providers via;
            }
          ]
      ) services.${s}.needs
    ) gs.services;

  # A guest owning databases needs their servers whatever it runs.
  deps =
    g:
    u.unique (
      map (d: d.server) (inv.guests.${g}.databases or [ ])
      ++ concatMap (n: (if n.through == null then n.providers else n.via ++ n.providers)) needsBy.${g}
    );
  needsBy = builtins.mapAttrs (g: _: needsOf g) inv.guests;
  dependsOn = listToAttrs (map (g: { name = g; value = filter (d: d != g) (deps g); }) guestNames);

  # Guests in waves: each wave depends only on earlier ones.
  waves =
    let
      step =
        done: left:
        if left == [ ] then
          [ ]
        else
          let
            isReady = g: builtins.all (d: done ? ${d}) dependsOn.${g};
            ready = filter isReady left;
            rest = filter (g: !(isReady g)) left;
          in
          if ready == [ ] then
            throw "guests.${head left}: dependency cycle among ${u.showList left} (the needs of their services, lib/services/)"
          else
            [ ready ] ++ step (done // listToAttrs (map (g: { name = g; value = true; }) ready)) rest;
    in
    step { } guestNames;

  # The command the hypervisor (deploy, GitOps rollback) and the lab run to probe one
  # health endpoint of a guest; exit status 0 means healthy.
  probeArgv =
    address: h:
    if h.kind == "http" then
      [ "curl" "--fail" "--silent" "--show-error" "--max-time" "5" "--output" "/dev/null" "http://${address}:${toString h.port}${h.path or "/"}" ]
    else
      [ "timeout" "5" "bash" "-c" "exec 3<>/dev/tcp/${address}/${toString h.port}" ];

  guests = builtins.mapAttrs (
    name: g:
    let
      address = g.address;
      stateSize = g.state_size or 0;
      host = inv.hosts.${g.host};
      own = servicePorts name;
      ports = own ++ extraPorts name;
    in
    {
      inherit name address prefix gateway;
      inherit (g) host vcpu memory services;
      cidr = "${address}/${toString prefix}";
      fqdn = "${name}.${domain}";
      mac = g.mac or (u.macFor name);
      tap = g.tap or "vm-${name}";
      hypervisor = g.hypervisor or "cloud-hypervisor";
      # On an Incus host: an Incus container or vm; null under microvm.nix.
      kind = if (host.engine or "microvm") == "incus" then g.kind or "container" else null;
      hostKey = g.host_key or null;
      ageKey = g.age_key or null;
      state =
        if stateSize > 0 then
          {
            size = stateSize;
            dataset = if host ? zfs then "${host.zfs.pool}/microvms/${name}" else null;
            hostPath = "/var/lib/microvms/${name}/state";
            guestPath = "/persist";
          }
        else
          null;
      inherit ports;
      # The same by service and name, for the modules: portOf.netbird-server.dashboard = 8080.
      portOf = builtins.mapAttrs (
        _: ps: builtins.listToAttrs (map (p: { inherit (p) name; value = p.port; }) ps)
      ) (builtins.groupBy (p: p.service) own);
      health = concatMap (s: map (h: h // { service = s; argv = probeArgv address h; }) services.${s}.health) g.services;
      # Every port a process of this guest binds, with its owner ("extra" for guests.<g>.ports).
      listening = map (p: { inherit (p) port proto service name; scope = p.scope or "any"; }) ports;
      needs = needsBy.${name};
      # The catalogue's entries of this guest's services, for the NixOS modules.
      units = concatMap (s: services.${s}.units) g.services;
      persist = concatMap (s: services.${s}.persist) g.services;
      routes = routesBy.${name};
      databases = databasesBy.${name};
      public = map (p: { inherit (p) port; proto = p.proto or "tcp"; }) (g.public or [ ]);
      dependsOn = dependsOn.${name};
      secretsFile = "secrets/${name}.yaml";
    }
  ) inv.guests;

  relay =
    let
      r = head relayNames;
      rh = inv.hosts.${r};
      peers = filter (h: (inv.hosts.${h}.wireguard.relay or null) == r) hostNames;
      peer = head peers;
      ph = inv.hosts.${peer};
    in
    if relayNames == [ ] || peers == [ ] then
      null
    else
      {
        host = r;
        publicAddress = rh.public_address;
        port = rh.wireguard.port;
        address = rh.wireguard.address;
        publicKey = rh.wireguard.public_key;
        interface = "wg-homestack";
        peer = {
          host = peer;
          address = ph.wireguard.address;
          publicKey = ph.wireguard.public_key;
          allowedIPs = [ "${ph.wireguard.address}/32" net.cidr ];
        };
        forwards = concatMap (
          g:
          map (p: {
            inherit (p) port;
            proto = p.proto or "tcp";
            guest = g;
            address = inv.guests.${g}.address;
          }) (inv.guests.${g}.public or [ ])
        ) guestNames;
      };

  tunnel =
    if inv.networks ? tunnel then
      {
        inherit (inv.networks.tunnel) cidr;
        prefix = (u.parseCIDR inv.networks.tunnel.cidr).prefix;
      }
    else
      null;

  plan = {
    inherit
      domain
      users
      admins
      hosts
      guests
      routes
      allow
      egress
      input
      mesh
      databases
      relay
      tunnel
      proxy
      ;
    certificates =
      let
        certNames = import ./certnames.nix;
        mode = certCfg.mode or "private-ca";
        routeNames = u.uniqueOrdered (map (r: r.fqdn) routes);
        guestFqdns = map (g: "${g}.${domain}") guestNames;
        names =
          if mode == "private-ca" then
            certNames.leafNames {
              inherit domain routeNames;
              guestNames = guestFqdns;
            }
          else
            [
              "*.${domain}"
              domain
            ];
      in
      {
        inherit mode names routeNames;
        includeNetwork = certCfg.include_network or false;
        acmeEmail = certCfg.acme_email or null;
        guestNames = guestFqdns;
        # Browsers ignore a wildcard directly under these (see lib/certnames.nix).
        publicSuffixes = certNames.publicSuffixParents (routeNames ++ guestFqdns);
        # Where NixOS puts them on the proxy; the lab maps these paths to its own directory.
        certFile = "/etc/homestack/tls/wildcard.crt";
        keyFile = "/run/secrets/tls/key";
        caFile = "/etc/homestack/tls/ca.crt";
        # Where `tools ca init` / `tools certs issue` keep them in the repository.
        caSource = "certs/ca.crt";
        certSource = "certs/wildcard.crt";
      }
      # acme-dns01: NixOS's security.acme (lego) obtains the certificate into
      # /var/lib/acme/<certName>/ (modules/acme.nix); Caddy serves those files.
      // (
        if mode == "acme-dns01" then
          {
            certFile = "/var/lib/acme/${domain}/fullchain.pem";
            keyFile = "/var/lib/acme/${domain}/key.pem";
            acme = {
              certName = domain;
              dnsProvider = "cloudflare";
              # The proxy's own resolver (dnsmasq) answers the domain locally, so lego asks
              # a public resolver where the zone's SOA and NS live.
              dnsResolver = "1.1.1.1:53";
              keyType = "ec256";
              validMinDays = 30;
            };
          }
        else
          { }
      );
    network = {
      inherit (net) cidr;
      inherit prefix gateway;
      address = u.formatIPv4 cidr.network;
      netmask = u.netmask prefix;
      bridge = net.bridge or "br-guests";
    };
    dns =
      map (n: {
        name = n;
        address = proxyAddress;
        kind = "route";
      }) (if proxy == null then [ ] else u.uniqueOrdered (map (r: r.fqdn) routes))
      # A guest's own name gives way to a route of the same name (served by that guest).
      ++ map (g: {
        name = "${g}.${domain}";
        address = inv.guests.${g}.address;
        kind = "guest";
      }) (filter (g: !(routeNameSet ? ${g})) guestNames);
    dnsServers = map (g: inv.guests.${g}.address) dnsGuests;
    deployOrder = [ (relayNames ++ hypervisorNames) ] ++ waves;
    # Guests in the order they start: each wave needs only earlier ones (the hypervisor
    # orders microvm@<guest> after the guests of earlier waves it needs).
    bootOrder = waves;
    secrets = secretsLib.files {
      inherit inv admins users hosts guests databases;
      mode = certCfg.mode or "private-ca";
    };
  };
in
plan
