# The relay `cloud-relay`: a small VPS. Its job comes from the plan (modules/relay.nix);
# this file describes the VPS itself. EXAMPLE for a typical KVM cloud server with one
# virtio disk booted by UEFI, and DHCP on its public interface; adapt it to your provider
# (docs/nixos.md).
{ modulesPath, ... }:
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  boot.loader.systemd-boot.enable = true;
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/ESP";
    fsType = "vfat";
    options = [ "umask=0077" ];
  };
  networking.useDHCP = true;
}
