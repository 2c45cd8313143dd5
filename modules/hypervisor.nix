# The hypervisor (`homelab`): runs every guest the plan places on it as a MicroVM and no
# application service itself. It owns the guest bridge (gateway address, taps enslaved),
# NATs the bridge to the LAN, filters everything guests send and everything it routes or
# receives with the plan's rule sets, serves the guests their time, keeps each guest's
# state on its own ZFS dataset, and installs each guest's SSH host key before the guest
# first boots. What it does as any hypervisor (the LAN uplink, the plan's tables, time, the
# ZFS pool) is hypervisor-common.nix, shared with the Incus engine.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  inherit (config.homestack) plan machine host;
  net = plan.network;
  guests = map (g: plan.guests.${g}) config.homestack.hypervisor.guests;
  stateful = lib.filter (g: g.state != null) guests;
  hostKeys = import ./guest-host-keys.nix { inherit config lib; };
  zfs = "${config.boot.zfs.package}/bin/zfs";
  mine = config.homestack.hypervisor.guests;
  # Each guest starts after the guests its services need (the plan's bootOrder, from the
  # catalogue's `needs`): on a cold boot db comes before auth, auth and proxy before vpn.
  # Only ordering: a guest whose provider is down still starts, and its services retry.
  # asDropin: microvm@ is a template; an instance gets a drop-in, not a unit of its own.
  bootOrder = lib.listToAttrs (
    map (g: {
      name = "microvm@${g.name}";
      value = {
        overrideStrategy = "asDropin";
        after = map (d: "microvm@${d}.service") (lib.filter (d: lib.elem d mine) g.dependsOn);
      };
    }) (lib.filter (g: lib.any (d: lib.elem d mine) g.dependsOn) guests)
  );
in
{
  imports = [
    ./hypervisor-common.nix
    ./services/tailscale-client.nix
  ];

  options.homestack.hypervisor.guests = mkOption {
    type = types.listOf types.str;
    default = host.guests;
    defaultText = lib.literalExpression "config.homestack.host.guests";
    description = "The guests this hypervisor runs: by default every guest the inventory places on it.";
  };

  options.homestack.guestConfigurations = mkOption {
    type = types.attrsOf types.unspecified;
    default = { };
    description = ''
      The evaluated NixOS systems of the guests (the flake's nixosConfigurations), so the
      hypervisor runs exactly the system `nixos-rebuild --flake .#<guest>` would build.
    '';
  };

  config = {
    assertions = [
      {
        assertion = host != null && host.role == "hypervisor";
        message = "hosts.${machine}: the hypervisor module needs role = \"hypervisor\" in inventory.toml";
      }
    ]
    ++ map (g: {
      assertion = config.homestack.guestConfigurations ? ${g.name};
      message = "guests.${g.name}: no NixOS system for it in homestack.guestConfigurations";
    }) guests;

    # Every guest, fully declarative: a host switch rebuilds and restarts changed guests.
    microvm.vms = lib.listToAttrs (
      map (g: {
        inherit (g) name;
        value = {
          evaluatedConfig = config.homestack.guestConfigurations.${g.name};
          # The default is true only for `config`-style guests; ours are pre-evaluated.
          restartIfChanged = true;
          autostart = true;
        };
      }) guests
    );

    # The guest bridge, with the taps enslaved by their exact names (the LAN uplink is
    # hypervisor-common.nix's).
    systemd.network = {
      netdevs."10-${net.bridge}".netdevConfig = {
        Kind = "bridge";
        Name = net.bridge;
      };
      networks."10-${net.bridge}" = {
        matchConfig.Name = net.bridge;
        address = [ "${net.gateway}/${toString net.prefix}" ];
        networkConfig.ConfigureWithoutCarrier = true;
        linkConfig.RequiredForOnline = "no";
      };
      networks."11-guest-taps" = {
        matchConfig.Name = map (g: g.tap) guests;
        networkConfig.Bridge = net.bridge;
        linkConfig.RequiredForOnline = "no";
      };
    };

    # Tables earlier versions loaded: removed on the next switch instead of lingering with
    # their old rules until a reboot (the plan's rule sets do not flush the whole rule set).
    networking.nftables.extraDeletions = ''
      table inet homestack-guests
      delete table inet homestack-guests
    '';

    # The pool (hypervisor-common.nix) holds one dataset per stateful guest, each
    # auto-snapshotted.
    services.zfs.autoSnapshot.enable = true;

    # Each stateful guest's SSH host key, copied to its state share (below).
    sops.secrets = hostKeys.secrets stateful;

    systemd.services = lib.mkMerge [
      bootOrder
      (lib.listToAttrs (
      lib.concatMap (
        g:
        let
          units = [
            "microvm@${g.name}.service"
            "microvm-virtiofsd@${g.name}.service"
          ];
          guestCfg = config.homestack.guestConfigurations.${g.name}.config;
          persist = guestCfg.homestack.persist or [ ];
          # A oneshot that must have run before the guest (and its share) start.
          beforeGuest = hostKeys.oneshotBefore units;
        in
        [
          {
            # The dataset exists before the guest's share is served, mounted where the
            # guest's state share reads from, marked for auto-snapshots, capped at state_size.
            name = "homestack-state-${g.name}";
            value = beforeGuest {
              description = "ZFS dataset for the state of guest ${g.name}";
              after = [ "zfs-import.target" "zfs-mount.service" ];
              requires = [ "zfs-import.target" ];
              script = ''
                if ! ${zfs} list -H -o name ${g.state.dataset} >/dev/null 2>&1; then
                  # virtiofsd serves the share with POSIX ACLs and xattrs (microvm.nix's
                  # default posixAcl): give the dataset both.
                  ${zfs} create -p \
                    -o mountpoint=${g.state.hostPath} \
                    -o acltype=posixacl -o xattr=sa \
                    -o com.sun:auto-snapshot=true \
                    ${g.state.dataset}
                fi
                # refquota caps the live data only; quota would count the auto-snapshots
                # too and fill up over time (zfsprops(7)). Set on every start, so a changed
                # state_size takes effect, and clear a quota an older version set.
                ${zfs} set refquota=${toString g.state.size}M ${g.state.dataset}
                ${zfs} set quota=none ${g.state.dataset}
                ${zfs} mount ${g.state.dataset} 2>/dev/null || true
                # microvm.nix would create a missing share source as microvm:kvm 0775; this
                # one holds the guest's host key and data: only root may look inside (virtiofsd
                # runs as root; the guest sees the files with their own owners).
                chmod 0700 ${g.state.hostPath}
                ${lib.concatMapStrings (d: "install -d -m 0755 ${g.state.hostPath}${d}\n") persist}
              '';
            };
          }
          {
            # The guest's host key, on the share it reads /etc/ssh from.
            name = hostKeys.unit g;
            value = beforeGuest {
              description = "Install the SSH host key of guest ${g.name}";
              after = [ "homestack-state-${g.name}.service" "sops-install-secrets.service" ];
              requires = [ "homestack-state-${g.name}.service" ];
              script = ''
                dir=${g.state.hostPath}/etc/ssh
                install -d -m 0755 "$dir"
                install -m 0600 ${hostKeys.path g} "$dir/ssh_host_ed25519_key"
                echo ${lib.escapeShellArg g.hostKey} > "$dir/ssh_host_ed25519_key.pub"
                chmod 0644 "$dir/ssh_host_ed25519_key.pub"
              '';
            };
          }
        ]
      ) stateful
    ))
    ];
  };
}
