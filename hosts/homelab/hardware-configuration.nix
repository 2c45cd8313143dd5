# EXAMPLE — replace with the output of `nixos-generate-config --show-hardware-config` on
# your machine. This one fits a typical x86_64 mini-PC with an NVMe disk,
# partitioned by ./disko.nix (disko labels partitions disk-<disk>-<partition>).
{ modulesPath, ... }:
{
  imports = [ (modulesPath + "/installer/scan/not-detected.nix") ];

  fileSystems."/" = {
    device = "/dev/disk/by-partlabel/disk-main-root";
    fsType = "ext4";
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-partlabel/disk-main-ESP";
    fsType = "vfat";
    options = [ "umask=0077" ];
  };
}
