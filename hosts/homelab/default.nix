# The hypervisor `homelab`: everything it runs comes from the plan (modules/hypervisor.nix);
# this directory only describes the machine itself. Replace the examples (this directory's
# hardware-configuration.nix and disko.nix) with your hardware (docs/nixos.md, "Adapt to your hardware").
{
  imports = [
    ./hardware-configuration.nix # EXAMPLE: regenerate with nixos-generate-config
  ];

  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
}
