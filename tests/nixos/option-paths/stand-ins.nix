# What Homestack's modules read from `config` and `pkgs`, as plain values, so they can be
# evaluated without nixpkgs. Secret and template names are those the modules declare.
{ lib, plan }:
let
  stub = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  secretNames =
    lib.concatMap (f: plan.secrets.${f}.keys) (builtins.attrNames plan.secrets)
    ++ map (d: "postgresql/${d.role}-password") plan.databases
    ++ map (g: "guest-host-keys/${g}") (builtins.attrNames plan.guests)
    ++ [ "gitops_deploy_key" ];
  root = /nonexistent-homestack-root;
in
{
  inherit root;

  pkgs = lib.genAttrs [
    "caddy"
    "netbird-relay"
    "zfs"
    "postgresql"
    "curl"
    "dnsutils"
    "git"
    "openssh"
    "jq"
    "bash"
    "coreutils"
    "iproute2"
  ] stub // {
    writeText = name: _: stub name;
    writeShellScript = name: _: stub name;
  };

  inputs = {
    sops-nix.nixosModules.sops = "foreign:sops-nix";
    microvm.nixosModules.host = "foreign:microvm-host";
    microvm.nixosModules.microvm = "foreign:microvm-guest";
    disko.nixosModules.disko = "foreign:disko";
  };

  configFor = machine: {
    homestack = {
      inherit plan machine;
      inherit root;
      guest = plan.guests.${machine} or null;
      host = plan.hosts.${machine} or null;
      persist = [ "/var/lib/nixos" ];
      guestConfigurations = { };
      hypervisor.guests = (plan.hosts.${machine} or { guests = [ ]; }).guests;
      caddy.package = stub "caddy";
      netbird.clientId = "netbird";
      secrets.file = "/nonexistent/secrets.yaml";
      nftables.rulesets = [ ];
      # modules/gitops.nix, off as in the example
      gitops = {
        enable = false;
        repository = "git@example.invalid:homelab.git";
        branch = "main";
        dates = "*:0/15";
        deployKeySecret = "gitops_deploy_key";
        statePassphraseSecret = "tofu_state_passphrase";
        knownHosts = null;
        healthTimeout = 300;
      };
    };
    sops = {
      secrets = lib.genAttrs secretNames (n: {
        path = "/run/secrets/${n}";
      });
      placeholder = lib.genAttrs secretNames (n: "<SOPS:${n}>");
      templates = lib.genAttrs [ "pocket-id.env" "caddy.env" "netbird-management.env" ] (n: {
        path = "/run/secrets/rendered/${n}";
      });
    };
    services = {
      caddy = {
        user = "caddy";
        group = "caddy";
      };
      openssh.hostKeys = [
        {
          type = "ed25519";
          path = "/etc/ssh/ssh_host_ed25519_key";
        }
      ];
      netbird.server.dashboard.finalDrv = stub "netbird-dashboard";
      postgresql.finalPackage = stub "postgresql";
    };
    networking.useNetworkd = false;
    networking.wireguard.useNetworkd = false;
    nix.package = stub "nix";
    systemd.package = stub "systemd";
    boot.zfs.package = stub "zfs";
  };
}
