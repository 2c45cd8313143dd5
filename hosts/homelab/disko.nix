# EXAMPLE disk layout (disko) — check `device` before running disko: it erases the disk.
# One NVMe disk: an EFI system partition, an ext4 root for the hypervisor's own system,
# and the rest as the ZFS pool that holds the guests' state (tank/microvms/<guest>, made
# by the hypervisor module when a guest first starts). The flake exposes it as
# diskoConfigurations.homelab with the pool named as hosts.homelab.zfs.pool says:
#   nix run github:nix-community/disko -- --mode disko --flake .#homelab
# ./hardware-configuration.nix mounts the partitions it creates (by partition label).
{
  pool ? "tank",
  device ? "/dev/nvme0n1",
}:
{
  disko.devices = {
    disk.main = {
      type = "disk";
      inherit device;
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            size = "1G";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          root = {
            size = "64G";
            content = {
              type = "filesystem";
              format = "ext4";
              mountpoint = "/";
            };
          };
          zfs = {
            size = "100%";
            content = {
              type = "zfs";
              inherit pool;
            };
          };
        };
      };
    };
    zpool.${pool} = {
      type = "zpool";
      rootFsOptions = {
        compression = "zstd";
        atime = "off";
        mountpoint = "none";
        "com.sun:auto-snapshot" = "false";
      };
      datasets.microvms = {
        type = "zfs_fs";
        options.mountpoint = "none";
      };
    };
  };
}
