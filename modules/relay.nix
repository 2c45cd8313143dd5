# The relay (`cloud-relay`): a small public VPS, the stack's stable public entry. It runs
# the WireGuard endpoint the hypervisor dials, and forwards the public ports of the plan
# (80/443 to the proxy, NetBird's UDP to the vpn guest) through the tunnel. No service of
# its own is exposed besides SSH and the WireGuard port.
#
# Client addresses: the plan's rule set masquerades forwarded traffic to the relay's
# tunnel address, so replies return through the tunnel without policy routing at home.
# The price is that the proxy sees every public client as 10.99.0.1 (docs/nixos.md).
{ config, lib, ... }:
let
  inherit (config.homestack) plan machine host;
in
{
  imports = [ ./wireguard.nix ];

  assertions = [
    {
      assertion = host != null && host.role == "relay";
      message = "hosts.${machine}: the relay module needs role = \"relay\" in inventory.toml";
    }
  ];

  boot.kernel.sysctl."net.ipv4.conf.all.forwarding" = true;

  # DNAT of the public ports, masquerade into the tunnel, a forward chain that lets only
  # those flows through, and an input chain that accepts only the plan's `input` for this
  # host (SSH and the WireGuard port, not from the tunnel); all policy drop. It is the
  # relay's whole firewall (NixOS's own is off, modules/common.nix).
  homestack.nftables.rulesets = [ plan.artifacts.hostNftables.${machine} ];
}
