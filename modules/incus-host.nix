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
  guests = map (g: plan.guests.${g}) host.guests;
  withKey = lib.filter (g: g.hostKey != null) guests;
  hostKeys = import ./guest-host-keys.nix { inherit config lib; };
in
{
  # The hypervisor policy, as on the microvm engine: the LAN uplink, routing for the
  # guests, the plan's NAT, host and bridge tables, time for the guests, the ZFS pool.
  imports = [ ./hypervisor-common.nix ];

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
    # its own) and keeps its datasets under <pool>/incus (the preseed's storage pool);
    # hypervisor-common.nix configures the LAN side and the pool.

    # Each guest's SSH host key, decrypted here and copied into the directory its instance
    # mounts read-only (the `host-key` disk device reads ${incus.keyDir}/<guest>), before
    # Incus starts: never through OpenTofu state, so sops-nix in the guest works as on the
    # microvm engine. A copy, not sops-nix's symlink, which would point outside the
    # container; owned by the container's root, which is host uid 1000000 (incus.nix gives
    # root the subordinate ids from 1000000, and Incus maps a container's root to the first).
    sops.secrets = hostKeys.secrets withKey;
    systemd.services = lib.listToAttrs (
      map (
        g:
        let
          owner = if g.kind == "vm" then "0" else "1000000";
          dir = "${incus.keyDir}/${g.name}";
        in
        {
          name = hostKeys.unit g;
          value = hostKeys.oneshotBefore [ "incus.service" ] {
            description = "Install the SSH host key of guest ${g.name} for its instance";
            after = [ "sops-install-secrets.service" ];
            script = ''
              install -d -m 0755 ${dir}
              install -m 0600 -o ${owner} -g ${owner} ${hostKeys.path g} ${dir}/ssh_host_ed25519_key
              echo ${lib.escapeShellArg g.hostKey} > ${dir}/ssh_host_ed25519_key.pub
            '';
          };
        }
      ) withKey
    );
  };
}
