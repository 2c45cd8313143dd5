# The plan: every value derived from a (valid) inventory. Rendered artifacts are added
# by default.nix. See docs/plan.md for the shape.
let
  u = import ./util.nix;
  services = import ./services.nix;
  secretsLib = import ./secrets.nix;
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
  routes = concatMap routesOfGuest guestNames;
  routeNameSet = u.toSet (map (r: r.name) routes);

  proxyGuests = filter (g: elem "caddy" inv.guests.${g}.services) guestNames;
  proxy = if proxyGuests == [ ] then null else head proxyGuests;
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
  databases = concatMap databasesOfGuest guestNames;

  addressOf =
    src:
    if inv.guests ? ${src} then
      inv.guests.${src}.address
    else if inv.hosts ? ${src} then
      gateway
    else
      null;
  kindOf =
    src:
    if inv.guests ? ${src} then
      "guest"
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
        sshFlow = [ (flow gs.host g 22 "tcp" "ssh from the hypervisor") ];
        healthFlows = concatMap (
          s: map (h: flow gs.host g h.port "tcp" "health check from the hypervisor") services.${s}.health
        ) gs.services;
      in
      sshFlow ++ healthFlows ++ routeFlows ++ explicit
    ) guestNames
    ++ map (d: flow d.owner d.server 5432 "tcp" "database ${d.name}") databases;
  flowKey = f: "${f.from}>${f.to}:${toString f.port}/${f.proto}";
  allow =
    let
      valid = filter (f: f.from != f.to) rawFlows;
      byKey = builtins.groupBy flowKey valid;
      keys = u.uniqueOrdered (map flowKey valid);
    in
    map (k: head byKey.${k}) keys;

  deps =
    g:
    let
      gs = inv.guests.${g};
    in
    u.unique (
      map (d: d.server) (gs.databases or [ ])
      ++ (if g == proxy then filter (o: o != g && (inv.guests.${o}.routes or [ ]) != [ ]) guestNames else [ ])
    );
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
            throw "guests.${head left}: dependency cycle among ${u.showList left} (databases and proxy routes)"
          else
            [ ready ] ++ step (done // listToAttrs (map (g: { name = g; value = true; }) ready)) rest;
    in
    step { } guestNames;

  guests = builtins.mapAttrs (
    name: g:
    let
      address = g.address;
      stateSize = g.state_size or 0;
      host = inv.hosts.${g.host};
    in
    {
      inherit name address prefix gateway;
      inherit (g) host vcpu memory services;
      cidr = "${address}/${toString prefix}";
      fqdn = "${name}.${domain}";
      mac = g.mac or (u.macFor name);
      tap = g.tap or "vm-${name}";
      hypervisor = g.hypervisor or "cloud-hypervisor";
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
      ports = servicePorts name ++ extraPorts name;
      # The same by service and name, for the modules: portOf.netbird-server.dashboard = 8080.
      portOf = builtins.mapAttrs (
        _: ps: builtins.listToAttrs (map (p: { inherit (p) name; value = p.port; }) ps)
      ) (builtins.groupBy (p: p.service) (servicePorts name));
      health = concatMap (s: map (h: h // { service = s; }) services.${s}.health) g.services;
      routes = routesOfGuest name;
      databases = databasesOfGuest name;
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
    secrets = secretsLib.files {
      inherit inv admins users hosts guests databases;
      mode = certCfg.mode or "private-ca";
    };
  };
in
plan
