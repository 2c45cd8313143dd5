# A NetBird client on a host, enrolled in the stack's own NetBird server with the setup
# key from the host's sops file (`netbird/setup-key`). It reaches the server through the
# proxy (the plan lets the hypervisor reach each guest's health ports, proxy:443 among them).
{ config, lib, ... }:
let
  inherit (config.homestack) plan;
  server = lib.findFirst (
    r: builtins.elem "netbird-server" plan.guests.${r.guest}.services
  ) null plan.routes;
in
lib.mkIf (server != null) {
  services.netbird.clients.homestack = {
    # The plan's input chain accepts this port on the LAN and SSH on this interface.
    inherit (plan.mesh) port interface;
    # The module has no option for the management URL; NetBird reads NB_<FLAG> variables.
    environment.NB_MANAGEMENT_URL = "https://${server.fqdn}";
    login = {
      enable = true;
      setupKeyFile = config.sops.secrets."netbird/setup-key".path;
    };
  };
  sops.secrets."netbird/setup-key" = { };

  # A host does not ask the guests' dnsmasq: it knows the proxy's route names itself.
  networking.extraHosts = lib.concatMapStrings (r: "${r.address} ${r.name}\n") (
    lib.filter (r: r.kind == "route") plan.dns
  );
}
