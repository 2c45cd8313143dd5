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

    # Each guest's SSH host key, decrypted here and shared read-only into the instance
    # (its `host-key` disk device reads ${incus.keyDir}/<guest>): never through OpenTofu
    # state, so sops-nix in the guest works as on the microvm engine.
    sops.secrets = lib.listToAttrs (
      map (g: {
        name = hostKeySecret g;
        value = {
          sopsFile = sopsFile "secrets/host-keys/${g.name}.yaml";
          key = "ssh_host_ed25519_key";
          path = "${incus.keyDir}/${g.name}/ssh_host_ed25519_key";
        };
      }) withKey
    );
  };
}
