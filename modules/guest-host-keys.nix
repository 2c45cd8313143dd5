# Each guest's SSH host key on its hypervisor, for either engine (modules/hypervisor.nix,
# modules/incus-host.nix): the sops secret that holds it, encrypted to that hypervisor
# only, and what the unit that installs it before the guest starts has in common. The
# guest decrypts its own secrets with this key, so it must be in place before the guest's
# first boot (and stay the same key forever after).
{ config, lib }:
let
  sopsFile = import ./sops-file.nix config.homestack.root;
  secretName = g: "guest-host-keys/${g.name}";
in
rec {
  # The unit that installs the key of guest `g`.
  unit = g: "homestack-host-key-${g.name}";

  # The sops secrets of the keys of `guests`; a new key (`tools secrets` rotation) is
  # installed again.
  secrets =
    guests:
    lib.listToAttrs (
      map (g: {
        name = secretName g;
        value = {
          sopsFile = sopsFile "secrets/host-keys/${g.name}.yaml";
          key = "ssh_host_ed25519_key";
          restartUnits = [ "${unit g}.service" ];
        };
      }) guests
    );

  # Where sops-nix decrypts the key of guest `g`.
  path = g: config.sops.secrets.${secretName g}.path;

  # A oneshot unit that must have run (and stays "active") before `units` start.
  oneshotBefore =
    units: service:
    {
      before = units;
      requiredBy = units;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
    }
    // service;
}
