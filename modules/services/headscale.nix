# Headscale on the mesh guest: the settings and the ACL policy rendered by lib from the plan
# (lib/render/headscale.nix), behind the proxy at the guest's route, with PocketID as the
# OIDC provider and the embedded DERP server with STUN (forwarded by the relay).
# Options read from nixpkgs nixos/modules/services/networking/headscale.nix: enable,
# address, port, user, settings (a freeform submodule written to the YAML config).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  inherit (config.homestack) plan guest;
  entry = (import ../../lib/services.nix).headscale;
  render = import ../../lib/render/headscale.nix;
  secret = entry.secrets.oidc-client-secret.name;
  ports = guest.portOf.headscale;
  policyPath = render.defaults.policyPath;
in
{
  options.homestack.headscale.clientId = mkOption {
    type = types.str;
    default = render.defaults.clientId;
    description = ''
      The OIDC client id of Headscale in PocketID. Create a client in PocketID with the
      callback https://<vpn route>/oidc/callback, put its id here and its secret in the
      guest's sops file as headscale/oidc-client-secret.
    '';
  };

  config = {
    services.headscale = {
      enable = true;
      # listen_addr as the plan renders it (the guest's address, the catalogue's port).
      address = guest.address;
      port = ports.http;
      settings = render.config plan {
        clientId = config.homestack.headscale.clientId;
        clientSecretPath = config.sops.secrets.${secret}.path;
        inherit policyPath;
      };
    };

    environment.etc.${lib.removePrefix "/etc/" policyPath}.text = plan.artifacts.headscale.policy;
    # Headscale reads the policy at start (and on SIGHUP): a changed policy restarts it.
    systemd.services.headscale.restartTriggers = [ plan.artifacts.headscale.policy ];

    # listen_addr is the guest's address; do not depend on networkd having set it yet.
    boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;

    sops.secrets.${secret} = {
      owner = config.services.headscale.user;
      group = config.services.headscale.group;
      restartUnits = [ "headscale.service" ];
    };
  };
}
