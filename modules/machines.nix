# One NixOS system per machine of the plan. Hosts get the module of their role (and
# hosts/<name>/ for their hardware); guests get the guest module, the service modules
# their `services` name, and guests/<name>/ when it exists, which adds settings to them.
{
  lib,
  plan,
  homestackModules,
  inputs,
  root,
  configurations,
  # the flake's own revision (null for a dirty tree) and tools package, for GitOps
  revision ? null,
  tools ? null,
}:
let
  own = dir: lib.optional (builtins.pathExists dir) dir;

  base = name: system: [
    inputs.sops-nix.nixosModules.sops
    homestackModules.plan
    homestackModules.common
    homestackModules.secrets
    {
      homestack = {
        inherit plan root;
        machine = name;
      };
      nixpkgs.hostPlatform = lib.mkDefault system;
      # What GitOps compares a new commit with: it must descend from this one.
      system.configurationRevision = lib.mkIf (revision != null) revision;
    }
  ];

  # A hypervisor's modules follow its engine (microvm.nix, or Incus: docs/incus.md).
  roles = {
    hypervisor =
      h:
      if h.engine == "incus" then
        [ homestackModules.incus-host ]
      else
        [
          inputs.microvm.nixosModules.host
          homestackModules.hypervisor
        ];
    relay = _: [ homestackModules.relay ];
  };
  onIncus = g: plan.hosts.${g.host}.engine == "incus";

  host =
    name: h:
    lib.nixosSystem {
      modules =
        base name h.system
        ++ roles.${h.role} h
        ++ [
          homestackModules.gitops
          { homestack.gitops.package = lib.mkDefault tools; }
        ]
        # the hypervisor runs the very systems `nixos-rebuild --flake .#<guest>` builds
        ++ lib.optional (h.role == "hypervisor" && h.engine != "incus") {
          homestack.guestConfigurations = lib.getAttrs h.guests configurations;
        }
        ++ own (root + "/hosts/${name}");
    };

  guest =
    name: g:
    lib.nixosSystem {
      modules =
        base name plan.hosts.${g.host}.system
        ++ (
          if onIncus g then
            [ homestackModules.incus-guest ]
          else
            [
              inputs.microvm.nixosModules.microvm
              homestackModules.guest
            ]
        )
        ++ map (s: homestackModules.${s}) g.services
        ++ own (root + "/guests/${name}");
    };

  # Hypervisors with an example disk layout, for `disko --flake .#<host>`.
  withDisko = lib.filterAttrs (
    name: h: h.role == "hypervisor" && builtins.pathExists (root + "/hosts/${name}/disko.nix")
  ) plan.hosts;
in
{
  nixosConfigurations = lib.mapAttrs host plan.hosts // lib.mapAttrs guest plan.guests;

  diskoConfigurations = lib.mapAttrs (
    name: h: import (root + "/hosts/${name}/disko.nix") { inherit (h.zfs) pool; }
  ) withDisko;
}
