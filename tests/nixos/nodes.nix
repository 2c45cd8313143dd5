# The nodes the NixOS VM tests are made of (./default.nix, ./alternatives.nix), each for
# the plan its test runs on: a machine of the plan, a guest of it on a plain VM, and a LAN
# client. Test material lives in ./fixtures and ../keys.
{
  pkgs,
  homestackModules,
  sops-nix,
  self,
  # the rest of the arguments of the test file that imports this one
  ...
}:
let
  inherit (pkgs) lib;
  fixtures = ./fixtures;
  keys = ../keys;
in
rec {
  # A test VM that is machine `name` of `plan`: the plan, the common hardening and the
  # sops wiring, with the fixtures as its secrets and its test host key as its identity
  # (on a real guest the hypervisor installs that key before the first boot).
  machine =
    plan: name:
    { lib, ... }:
    {
      imports = [
        sops-nix.nixosModules.sops
        homestackModules.plan
        homestackModules.common
        homestackModules.secrets
      ];
      homestack = {
        inherit plan;
        machine = name;
        root = fixtures;
      };
      sops.age.sshKeyPaths = lib.mkForce [ "${keys}/host_${name}" ];
    };

  # A guest's services and firewall on a plain VM, with the guest's address from the plan
  # added to the test VLAN interface: the service modules its `services` name, then
  # guests/<name>/, as modules/machines.nix composes them.
  guest = plan: name: {
    imports = [
      (machine plan name)
      homestackModules.guest-firewall
    ]
    ++ map (s: homestackModules.${s}) plan.guests.${name}.services
    ++ lib.optional (builtins.pathExists (self + "/guests/${name}")) (self + "/guests/${name}");
    # A guest resolves the domain through the plan's DNS guests (modules/guest-common.nix).
    networking.nameservers = plan.dnsServers;
    networking.interfaces.eth1.ipv4.addresses = [
      {
        inherit (plan.guests.${name}) address;
        prefixLength = plan.network.prefix;
      }
    ];
  };

  # A LAN client that trusts the test CA and asks the plan's DNS guests: outside the guest
  # network, it reaches the guests' addresses on-link.
  client = plan: {
    security.pki.certificateFiles = [ "${fixtures}/certs/ca.crt" ];
    networking.nameservers = plan.dnsServers;
    networking.interfaces.eth1.ipv4.routes = [
      {
        inherit (plan.network) address;
        prefixLength = plan.network.prefix;
      }
    ];
    environment.systemPackages = [
      pkgs.dnsutils
      pkgs.curl
    ];
  };
}
