# The Incus engine as data: for a hypervisor with engine = "incus", the preseed NixOS hands
# to `incus admin init` (virtualisation.incus.preseed), and one resource model per guest.
# `tools tofu export` serializes the models as OpenTofu JSON for the lxc/incus provider and
# the lab creates its instances from the very same models, so what is tested and what is
# deployed cannot drift. See docs/incus.md.
#
# Key names are Incus's own (doc/reference/network_bridge.md, devices_nic.md,
# devices_disk.md, instance_options.md and network_acls.md in lxc/incus).
let
  u = import ../util.nix;
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    listToAttrs
    sort
    ;

  # Names Incus objects get; one place, so the lab, the export and the docs agree.
  names = {
    pool = "homestack";
    profile = "homestack";
    acl = g: "homestack-${g}";
    image = g: "homestack/${g}";
    stateVolume = g: "${g}-state";
  };
  # A guest's root volume holds its NixOS closure and the container's writable layers;
  # its state lives on a separate volume sized from state_size, like the microvm engine's
  # ZFS dataset.
  rootSize = 8192;
  mib = n: "${toString n}MiB";

  # Address ranges for ACL rules. "lan" is anything outside the guest network and the
  # tunnel, as in the nftables renderer; Incus ACL sources take ranges (a-b), so it is the
  # complement of those networks, computed exactly.
  complement =
    cidrs:
    let
      nets = sort (a: b: a.network < b.network) (map u.parseCIDR cidrs);
      top = 4294967296;
      step =
        acc: n:
        {
          start = n.network + n.size;
          ranges = acc.ranges ++ u.optional (n.network > acc.start) { from = acc.start; to = n.network - 1; };
        };
      done = builtins.foldl' step { start = 0; ranges = [ ]; } nets;
      ranges = done.ranges ++ u.optional (done.start < top) { from = done.start; to = top - 1; };
    in
    map (r: "${u.formatIPv4 r.from}-${u.formatIPv4 r.to}") ranges;
  lanNets = [ "10.0.0.0/8" "172.16.0.0/12" "192.168.0.0/16" ];

  forHost =
    plan: hostName:
    let
      host = plan.hosts.${hostName};
      net = plan.network;
      guestNames = filter (g: plan.guests.${g}.host == hostName) (attrNames plan.guests);
      outside = complement ([ net.cidr ] ++ u.optional (plan.tunnel != null) plan.tunnel.cidr);

      # Where a flow's other end is, as an ACL source or destination.
      endpoint =
        kind: address:
        if kind == "lan" then
          concatStringsSep "," outside
        else if kind == "internet" then
          null
        else
          "${address}/32";

      # A rule without a source or destination matches any address (network_acls.md).
      rule =
        extra: f:
        u.filterAttrs (_: v: v != null) (
        {
          action = "allow";
          protocol = f.proto;
          destination_port = toString f.port;
          description = f.reason;
          state = "enabled";
        }
        // extra
        );

      aclOf =
        g:
        let
          gs = plan.guests.${g};
          inbound = filter (f: f.to == g) plan.allow;
          outboundToGuests = filter (f: f.from == g && f.fromKind == "guest") plan.allow;
          egress = filter (f: f.from == g) plan.egress;
        in
        {
          name = names.acl g;
          description = "What reaches ${g} and what ${g} may reach (homestack plan)";
          # Incus drops what no rule allows once security.acls.default.*.action is "drop"
          # on the NIC (below); the rules are the plan's allow matrix and egress.
          ingress = map (
            f:
            rule {
              source = endpoint f.fromKind f.fromAddress;
              destination = "${gs.address}/32";
            } f
          ) inbound;
          egress =
            map (
              f:
              rule {
                source = "${gs.address}/32";
                destination = "${f.toAddress}/32";
              } f
            ) outboundToGuests
            ++ map (
              f:
              rule {
                source = "${gs.address}/32";
                destination = if f.toKind == "lan" then concatStringsSep "," lanNets else endpoint f.toKind f.toAddress;
              } f
            ) egress;
        };

      instanceOf =
        g:
        let
          gs = plan.guests.${g};
          state = gs.state;
        in
        {
          name = g;
          type = if gs.kind == "vm" then "virtual-machine" else "container";
          image = names.image g;
          profiles = [ names.profile ];
          config = {
            "limits.cpu" = toString gs.vcpu;
            "limits.memory" = mib gs.memory;
            "boot.autostart" = "true";
            # Incus starts higher priorities first; the plan's boot waves in reverse.
            "boot.autostart.priority" = toString (bootPriority g);
            "user.homestack.guest" = g;
          };
          devices = [
            {
              name = "eth0";
              type = "nic";
              properties = {
                network = net.bridge;
                name = "eth0";
                hwaddr = gs.mac;
                # The host side keeps the plan's tap name: the bridge filter matches on it.
                host_name = gs.tap;
                "ipv4.address" = gs.address;
                # No DHCP on the bridge (the guests configure their own address), so a
                # static NIC address requires IP filtering: it is anti-spoofing as well.
                "security.mac_filtering" = "true";
                "security.ipv4_filtering" = "true";
                "security.acls" = names.acl g;
                "security.acls.default.ingress.action" = "drop";
                "security.acls.default.egress.action" = "drop";
                "security.acls.default.ingress.logged" = "true";
                "security.acls.default.egress.logged" = "true";
              };
            }
            {
              name = "root";
              type = "disk";
              properties = {
                pool = names.pool;
                path = "/";
                size = mib rootSize;
              };
            }
          ]
          ++ u.optionals (state != null) [
            {
              name = "state";
              type = "disk";
              properties = {
                pool = names.pool;
                source = names.stateVolume g;
                path = state.guestPath;
              };
            }
          ]
          ++ u.optional (gs.hostKey != null) {
            # The guest's SSH host key, decrypted on the host by sops-nix and shared read-only
            # (never through OpenTofu state), where modules/guest.nix reads it.
            name = "host-key";
            type = "disk";
            properties = {
              source = "${keyDir}/${g}";
              path = "${if state != null then state.guestPath else ""}/etc/ssh";
              readonly = "true";
            };
          };
          volumes = u.optional (state != null) {
            name = names.stateVolume g;
            pool = names.pool;
            content_type = "filesystem";
            config.size = mib state.size;
          };
          acl = aclOf g;
          # The relay reaches public ports through the tunnel by routing to the guest's own
          # address (the tunnel's allowed IPs include the guest network), so no proxy or
          # forward device is needed; the ACL lets the relay's address in.
          public = map (f: { inherit (f) port proto; }) (filter (f: f.guest == g) (if plan.relay == null then [ ] else plan.relay.forwards));
        };

      waves = filter (w: w != [ ]) (map (w: filter (g: plan.guests.${g}.host == hostName) w) plan.bootOrder);
      bootPriority =
        g:
        let
          idx = u.imap0 (i: w: { inherit i w; }) waves;
          mine = filter (x: builtins.elem g x.w) idx;
        in
        if mine == [ ] then 0 else builtins.length waves - (builtins.head mine).i;

      keyDir = "/run/homestack/incus-host-keys";
    in
    {
      inherit keyDir;
      inherit (names) pool profile;
      host = hostName;
      # `incus admin init --preseed` (doc/howto/initialize.md): what NixOS may declare.
      # The daemon never creates or removes instances from it.
      preseed = {
        config = { };
        storage_pools = [
          {
            name = names.pool;
            driver = "zfs";
            description = "Homestack guests (${host.zfs.pool}/incus)";
            # An existing pool's dataset: Incus creates it and its children.
            config.source = "${host.zfs.pool}/incus";
          }
        ];
        networks = [
          {
            name = net.bridge;
            type = "bridge";
            description = "Homestack guest network";
            config = {
              "ipv4.address" = "${net.gateway}/${toString net.prefix}";
              # The hypervisor's nftables NATs and filters (the same tables as the microvm
              # engine), and the proxy guest's dnsmasq answers DNS: Incus adds none of its
              # own rules, DHCP or DNS on this bridge.
              "ipv4.nat" = "false";
              "ipv4.dhcp" = "false";
              "ipv4.firewall" = "false";
              "ipv6.address" = "none";
              "dns.mode" = "none";
            };
          }
        ];
        # The default profile only gives a hand-made instance a root disk; Homestack's own
        # profile is OpenTofu's (below), so no object has two owners.
        profiles = [
          {
            name = "default";
            description = "Default Incus profile";
            config = { };
            devices.root = {
              type = "disk";
              pool = names.pool;
              path = "/";
            };
          }
        ];
      };
      # Declared by OpenTofu with the instances that use it.
      profiles = [
        {
          name = names.profile;
          description = "Homestack guests: unprivileged, no nesting";
          config = {
            "security.privileged" = "false";
            "security.nesting" = "false";
            "snapshots.expiry" = "2w";
          };
        }
      ];
      instances = listToAttrs (map (g: { name = g; value = instanceOf g; }) guestNames);
      # The plan's DNS as an Incus network zone (records relative to the zone).
      zone = {
        name = plan.domain;
        description = "Homestack names (the proxy's dnsmasq serves the same records)";
        records = map (r: {
          name = if r.name == plan.domain then "@" else builtins.substring 0 (builtins.stringLength r.name - builtins.stringLength plan.domain - 1) r.name;
          entries = [
            {
              type = "A";
              value = r.address;
              ttl = 300;
            }
          ];
        }) plan.dns;
      };
    };
in
{
  inherit forHost complement names;
}
