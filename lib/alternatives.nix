# The stack's choices between alternatives, read from the services the inventory's guests
# name: the ingress is the guest running a service of kind "ingress" (caddy, traefik), the
# mesh the guest running one of kind "mesh" (netbird-server, headscale). The choice is the
# catalogue entry the operator names; no second key can disagree with it. The hosts' mesh
# client follows from the mesh server (NetBird's client, or Tailscale's for Headscale), so
# it is not chosen separately. See docs/alternatives.md.
let
  u = import ./util.nix;
  services = import ./services.nix;
  inherit (builtins) attrNames elem filter head length;

  ofKind = kind: filter (s: services.${s}.kind == kind) (attrNames services);

  # The hosts' mesh client for each mesh server: interface and WireGuard port, which the
  # hosts' nftables input rules name (plan.mesh).
  clients = {
    netbird-server = {
      client = "netbird";
      interface = "nb-homestack";
      port = 51821;
      reason = "the NetBird client's WireGuard";
    };
    # services.tailscale.interfaceName / port (nixpkgs nixos/modules/services/networking/tailscale.nix;
    # 41641 is tailscaled's default port).
    headscale = {
      client = "tailscale";
      interface = "ts-homestack";
      port = 41641;
      reason = "the Tailscale client's WireGuard";
    };
  };
in
rec {
  ingressServices = ofKind "ingress";
  meshServices = ofKind "mesh";
  inherit clients;

  # choice inv -> { ingress, proxy, mesh, meshGuest }: the service and guest of each (null
  # when the inventory runs none).
  choice =
    inv:
    let
      guestNames = attrNames inv.guests;
      pick =
        kinds:
        let
          found = u.concatMap (g: map (s: { guest = g; service = s; }) (filter (s: elem s kinds) inv.guests.${g}.services)) guestNames;
        in
        if found == [ ] then { guest = null; service = null; } else head found;
      ing = pick ingressServices;
      mesh = pick meshServices;
    in
    {
      ingress = ing.service;
      proxy = ing.guest;
      mesh = mesh.service;
      meshGuest = mesh.guest;
    };

  # errors inv -> [ "KEY: message" ]: one mesh server in the stack (validate.nix checks
  # that one guest runs the ingress). Two of them on one guest also clash on their ports:
  # lib/contracts.nix says so.
  errors =
    inv:
    let
      guestNames = attrNames inv.guests;
      running = kinds: u.concatMap (g: map (s: { guest = g; service = s; }) (filter (s: elem s kinds) (inv.guests.${g}.services or [ ]))) guestNames;
      one =
        what: kinds:
        let
          rs = running kinds;
          a = head rs;
          b = builtins.elemAt rs 1;
        in
        u.optional (length rs > 1)
          "guests.${b.guest}.services: ${b.service} is a second ${what} (guests.${a.guest} runs ${a.service}): the stack has one ${what}; choose ${u.showList kinds}";
      headscaleGuests = filter (g: elem "headscale" (inv.guests.${g}.services or [ ])) guestNames;
      # MagicDNS names nodes <host>.mesh.<domain>; Headscale refuses a base_domain that
      # contains server_url's host (hscontrol/types/config.go), so no headscale route may
      # be named "mesh".
      meshRoute = u.concatMap (
        g: map (r: "guests.${g}.routes: route ${r.name} is Headscale's server name, and mesh.<domain> is its MagicDNS base domain: rename the route") (
          filter (r: r.name == "mesh") (inv.guests.${g}.routes or [ ])
        )
      ) headscaleGuests;
    in
    one "mesh server" meshServices ++ meshRoute;
}
