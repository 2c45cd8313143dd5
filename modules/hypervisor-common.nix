# What every hypervisor does, whatever its engine (modules/hypervisor.nix for microvm.nix,
# modules/incus-host.nix for Incus): DHCP on its LAN uplink, routing for the guests, the
# plan's NAT, host and bridge nftables tables, time for the guests, the inventory's ZFS
# pool kept scrubbed, and the tunnel and mesh clients. The guest bridge is the engine's.
{ config, lib, ... }:
let
  inherit (config.homestack) plan machine host;
  net = plan.network;
in
{
  imports = [
    ./wireguard.nix
    ./services/netbird-client.nix
  ];

  config = {
    networking.useNetworkd = true;
    # Only the interfaces named below and by the engine are configured (no DHCP on every NIC).
    networking.useDHCP = false;
    systemd.network = {
      enable = true;
      # EXAMPLE uplink: DHCP on the LAN interface from the inventory. Replace with a
      # static address if your LAN needs one (docs/nixos.md).
      networks."20-lan" = {
        matchConfig.Name = host.lanInterface;
        networkConfig.DHCP = "yes";
      };
    };

    # Routing for the guests; the plan's NAT table masquerades them to the LAN.
    boot.kernel.sysctl."net.ipv4.conf.all.forwarding" = true;
    # The plan's tables are this host's whole firewall (NixOS's own is off, common.nix):
    # NAT to the LAN (`networking.nat` stays off: this table masquerades); an `inet` table
    # whose input, forward and output chains drop all but the plan's `input`, flows and
    # egress (guest to guest through the gateway included); and the `bridge`-family table,
    # because guest-to-guest frames never reach the IP layer (on Incus it matches each
    # instance's host-side interface by the plan's tap name, which the resource model gives
    # the NIC as host_name).
    homestack.nftables.rulesets = [
      plan.artifacts.hostNftables.${machine}
    ]
    ++ lib.optional (
      plan.artifacts.bridgeNftablesByHost ? ${machine}
    ) plan.artifacts.bridgeNftablesByHost.${machine};

    # Guests keep time from their hypervisor (the plan's egress `time from the hypervisor`,
    # UDP 123, accepted only from the bridge by the input chain): chrony serves the guest
    # network and takes its own time from the default pool.
    services.chrony = {
      enable = true;
      extraConfig = "allow ${net.cidr}";
    };

    # ZFS: the pool from the inventory holds the guests' state.
    boot.supportedFilesystems = [ "zfs" ];
    boot.zfs.extraPools = [ host.zfs.pool ];
    networking.hostId = host.zfs.hostId;
    services.zfs.autoScrub = {
      enable = true;
      pools = [ host.zfs.pool ];
    };
  };
}
