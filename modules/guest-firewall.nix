# A guest's firewall: the nftables rule set the plan renders for it (default drop in and
# out: only the flows and the egress the inventory allows). Also used by the NixOS VM tests' plain nodes.
{ config, ... }:
let
  inherit (config.homestack) plan machine;
in
{
  imports = [ ./nftables.nix ];

  # The plan's rule set is the guest's whole firewall, in and out. NixOS's own firewall would
  # add a second input chain with its own default drop, and a packet must pass both.
  networking.firewall.enable = false;
  homestack.nftables.rulesets = [ plan.artifacts.nftables.${machine} ];
}
