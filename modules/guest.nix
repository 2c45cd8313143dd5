# Every MicroVM guest: its size from the inventory, one tap with the plan's MAC, the
# host's /nix/store shared read-only, and one persistent share for everything stateful (a
# guest's / is tmpfs and forgets the rest at each boot). Its address, state directories
# and host key are those of every guest (guest-common.nix).
{ config, lib, ... }:
let
  inherit (config.homestack) guest;
  state = import ./guest-state.nix guest;
  # Shares are virtiofs (microvm.nix's default is 9p, which cloud-hypervisor lacks).
  # virtiofsd runs as root on the host, so each guest service keeps its own file ownership
  # on the state share; a 9p server runs as the `microvm` user and could not read the
  # root-only share the hypervisor prepares (see the assertion).
  shareProto = "virtiofs";
  catalogue = import ../lib/services.nix;
  # The units of services that need another guest at run time (the plan's `needs`): on a
  # cold boot they start before their providers answer and exit, so they retry forever
  # with a growing pause instead of hitting systemd's start limit and staying dead.
  waiting = lib.unique (lib.concatMap (n: catalogue.${n.service}.units) guest.needs);
in
{
  imports = [ ./guest-common.nix ];

  assertions = [
    {
      assertion = builtins.elem guest.hypervisor [
        "cloud-hypervisor"
        "qemu"
        "crosvm"
      ];
      message = "guests.${guest.name}: hypervisor ${guest.hypervisor} cannot serve virtiofs shares, which a Homestack guest's store and state use; use cloud-hypervisor (the default), qemu or crosvm";
    }
  ];

  microvm = {
    inherit (guest) hypervisor vcpu;
    # qemu hangs at exactly 2048 MiB (microvm.nix); one MiB more avoids it.
    mem = if guest.hypervisor == "qemu" && guest.memory == 2048 then 2049 else guest.memory;
    interfaces = [
      {
        type = "tap";
        id = guest.tap;
        inherit (guest) mac;
      }
    ];
    shares = [
      {
        tag = "ro-store";
        source = "/nix/store";
        mountPoint = "/nix/.ro-store";
        proto = shareProto;
        readOnly = true;
      }
      {
        tag = "state";
        source = state.hostPath;
        mountPoint = state.guestPath;
        proto = shareProto;
      }
    ];
  };

  fileSystems = lib.mkMerge (
    [
      # sops-nix decrypts during activation with the host key on this share, and only the
      # store share is mounted early by default: mount the state share in the initrd too.
      { ${state.guestPath}.neededForBoot = true; }
    ]
    # The state directories' bind mounts (guest-common.nix) are mounted in the initrd too,
    # after the share and before activation writes /var/lib/nixos (the uid map).
    ++ map (dir: {
      ${dir} = {
        depends = [ state.guestPath ];
        neededForBoot = true;
      };
    }) config.homestack.persist
  );

  # RestartSteps/RestartMaxDelaySec need systemd >= 254 (systemd.service(5)): the pause
  # grows from RestartSec to RestartMaxDelaySec over RestartSteps restarts. nixpkgs has
  # shipped systemd 256 since 2024 (NixOS/nixpkgs#367268: 256.9 -> 256.10); the pin is of
  # 2026-08-02.
  # startLimitIntervalSec = 0 lifts the start limit (systemd.unit(5), StartLimitIntervalSec=).
  systemd.services = lib.listToAttrs (
    map (unit: {
      name = lib.removeSuffix ".service" unit;
      value = {
        startLimitIntervalSec = 0;
        serviceConfig = {
          Restart = lib.mkDefault "on-failure";
          RestartSec = lib.mkDefault "2s";
          RestartSteps = lib.mkDefault 8;
          RestartMaxDelaySec = lib.mkDefault "1min";
        };
      };
    }) waiting
  );

  # The store is the hypervisor's, shared read-only, and its Nix database is not here: the
  # hypervisor collects the garbage.
  nix.gc.automatic = false;
}
