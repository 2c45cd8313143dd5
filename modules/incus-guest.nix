# A guest on a hypervisor with engine = "incus": an Incus system container (or VM) made
# from this very NixOS system (the flake's incusImages.<guest>, docs/incus.md). Incus gives
# it its size, its NIC with the plan's MAC, its state volume at the plan's guestPath and its
# SSH host key there (all from lib/render/incus.nix); inside, it is configured as every
# guest is (guest-common.nix: a static address matched by that MAC, state directories on
# the volume, the host key, which the hypervisor shares read-only before the first start:
# modules/incus-host.nix).
{ config, ... }:
let
  inherit (config.homestack) guest;
in
{
  imports = [ ./guest-common.nix ];

  # An LXC container shares the host's kernel; nixpkgs' lxc-container.nix (added by the
  # image outputs) sets the rest. Declared in nixos/modules/virtualisation/nixos-containers.nix.
  boot.isContainer = guest.kind == "container";
}
