# A hypervisor with engine = "incus": NixOS runs the Incus daemon with the preseed lib
# rendered (storage pool on the inventory's ZFS pool, the guest bridge), and the same
# hypervisor policy as the microvm engine (the plan's NAT, host and bridge nftables, time
# for the guests, ZFS upkeep, the guests' host keys). Nothing else: OpenTofu declares the
# instances, volumes, profiles and ACLs from the same plan (`tools tofu export`,
# docs/incus.md), because Incus's preseed never creates or removes instances.
# Options: nixpkgs nixos/modules/virtualisation/incus.nix, read at 0148e16d (enable, preseed
# as freeform YAML that incus-preseed.service applies on every start; its assertion
# wants networking.nftables.enable whenever the NixOS firewall is on).
{ config, lib, ... }:
let
  inherit (config.homestack) plan machine host;
  incus = plan.artifacts.incus.${machine};
  net = plan.network;
  guests = map (g: plan.guests.${g}) host.guests;
  withKey = lib.filter (g: g.hostKey != null) guests;
  sopsFile = import ./sops-file.nix config.homestack.root;
  hostKeySecret = g: "guest-host-keys/${g.name}";
in
{
  imports = [
    ./wireguard.nix
    ./services/netbird-client.nix
  ];

  config = {
    assertions = [
      {
        assertion = host != null && host.role == "hypervisor" && host.engine == "incus";
        message = "hosts.${machine}: the Incus host module needs role = \"hypervisor\" and engine = \"incus\" in inventory.toml";
      }
    ];

    virtualisation.incus = {
      enable = true;
      inherit (incus) preseed;
    };
    # Incus on NixOS needs the nftables backend (incus.nix asserts it); the plan's tables
    # are loaded through it (modules/nftables.nix).
    networking.nftables.enable = true;

    # Incus creates the bridge (the preseed's network, without NAT, DHCP, DNS or rules of
    # its own); this host configures only its LAN side.
    networking.useNetworkd = true;
    networking.useDHCP = false;
    systemd.network = {
      enable = true;
      # EXAMPLE uplink: DHCP on the LAN interface from the inventory (docs/nixos.md).
      networks."20-lan" = {
        matchConfig.Name = host.lanInterface;
        networkConfig.DHCP = "yes";
      };
    };

    # The hypervisor policy, as on the microvm engine (modules/hypervisor.nix): routing for
    # the guests, the plan's NAT and host table, and the bridge-family table (guest-to-guest
    # frames never reach the IP layer; it matches each instance's host-side interface by
    # the plan's tap name, which the resource model gives the NIC as host_name).
    boot.kernel.sysctl."net.ipv4.conf.all.forwarding" = true;
    homestack.nftables.rulesets = [
      plan.artifacts.hostNftables.${machine}
    ]
    ++ lib.optional (
      plan.artifacts.bridgeNftablesByHost ? ${machine}
    ) plan.artifacts.bridgeNftablesByHost.${machine};

    # Guests keep time from their hypervisor (the plan's egress to UDP 123 on the gateway).
    services.chrony = {
      enable = true;
      extraConfig = "allow ${net.cidr}";
    };

    # The pool from the inventory; Incus keeps its datasets under <pool>/incus.
    boot.supportedFilesystems = [ "zfs" ];
    boot.zfs.extraPools = [ host.zfs.pool ];
    networking.hostId = host.zfs.hostId;
    services.zfs.autoScrub = {
      enable = true;
      pools = [ host.zfs.pool ];
    };

    # Each guest's SSH host key, decrypted here and copied into the directory its instance
    # mounts read-only (the `host-key` disk device reads ${incus.keyDir}/<guest>), before
    # Incus starts: never through OpenTofu state, so sops-nix in the guest works as on the
    # microvm engine. A copy, not sops-nix's symlink, which would point outside the
    # container; owned by the container's root, which is host uid 1000000 (incus.nix gives
    # root the subordinate ids from 1000000, and Incus maps a container's root to the first).
    sops.secrets = lib.listToAttrs (
      map (g: {
        name = hostKeySecret g;
        value = {
          sopsFile = sopsFile "secrets/host-keys/${g.name}.yaml";
          key = "ssh_host_ed25519_key";
          restartUnits = [ "homestack-host-key-${g.name}.service" ];
        };
      }) withKey
    );
    systemd.services = lib.listToAttrs (
      map (
        g:
        let
          owner = if g.kind == "vm" then "0" else "1000000";
          dir = "${incus.keyDir}/${g.name}";
        in
        {
          name = "homestack-host-key-${g.name}";
          value = {
            description = "Install the SSH host key of guest ${g.name} for its instance";
            after = [ "sops-install-secrets.service" ];
            before = [ "incus.service" ];
            requiredBy = [ "incus.service" ];
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
            };
            script = ''
              install -d -m 0755 ${dir}
              install -m 0600 -o ${owner} -g ${owner} ${config.sops.secrets.${hostKeySecret g}.path} ${dir}/ssh_host_ed25519_key
              echo ${lib.escapeShellArg g.hostKey} > ${dir}/ssh_host_ed25519_key.pub
            '';
          };
        }
      ) withKey
    );
  };
}
