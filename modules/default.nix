# The NixOS modules of Homestack, by name. `machines.nix` picks them for each machine of
# the plan; a guest's `services` from the inventory name its service modules, which the
# catalogue (lib/services/<name>.nix, `module`) places under ./services/.
let
  catalogue = import ../lib/services.nix;
in
{
  plan = ./plan.nix; # homestack.* options: the plan and which machine this is
  common = ./common.nix; # every machine: admins, SSH keys only, firewall, nix.gc
  secrets = ./secrets.nix; # sops-nix: each machine decrypts its own file
  hypervisor = ./hypervisor.nix; # microvm.nix host, bridge, NAT, ZFS, guest host keys
  incus-host = ./incus-host.nix; # engine = "incus": the Incus daemon and its preseed, same policy
  incus-guest = ./incus-guest.nix; # a guest as an Incus container or VM
  relay = ./relay.nix; # public anchor: WireGuard endpoint and forwards
  gitops = ./gitops.nix; # hosts: pull signed commits and switch, with rollback (opt-in)
  wireguard = ./wireguard.nix; # the tunnel between the hypervisor and the relay
  guest = ./guest.nix; # every MicroVM guest: vcpu, memory, tap, shares, address
  guest-firewall = ./guest-firewall.nix; # the guest's nftables rule set from the plan
  nftables = ./nftables.nix; # loads the plan's rendered tables without flushing others'
  netbird-client = ./services/netbird-client.nix;
  tailscale-client = ./services/tailscale-client.nix; # for a Headscale mesh (docs/alternatives.md)
}
# service modules, named as in the inventory's `services`
// builtins.mapAttrs (_: s: ./services + "/${s.module}") catalogue
