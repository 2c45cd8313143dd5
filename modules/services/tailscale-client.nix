# The Tailscale client on a host, enrolled in the stack's own Headscale with the pre-auth
# key from the host's sops file (`headscale/preauth-key`, issued by Headscale with the
# host's tag, docs/alternatives.md). It reaches Headscale through the proxy, as the NetBird
# client reaches its server. Options read from nixpkgs
# nixos/modules/services/networking/tailscale.nix (enable, interfaceName, port,
# authKeyFile, extraUpFlags).
{ config, lib, ... }:
let
  inherit (config.homestack) plan;
  server =
    if plan.mesh != null && plan.mesh.client == "tailscale" then
      lib.findFirst (r: r.guest == plan.mesh.guest) null plan.routes
    else
      null;
in
lib.mkIf (server != null) {
  services.tailscale = {
    enable = true;
    # The plan's input chain accepts this port on the LAN and SSH on this interface.
    interfaceName = plan.mesh.interface;
    inherit (plan.mesh) port;
    authKeyFile = config.sops.secrets."headscale/preauth-key".path;
    extraUpFlags = [
      "--login-server=https://${server.fqdn}"
      # The host keeps its own resolver and knows the route names itself (below).
      "--accept-dns=false"
    ];
  };
  sops.secrets."headscale/preauth-key" = { };

  # A host does not ask the guests' dnsmasq: it knows the proxy's route names itself.
  networking.extraHosts = lib.concatMapStrings (r: "${r.address} ${r.name}\n") (
    lib.filter (r: r.kind == "route") plan.dns
  );
}
