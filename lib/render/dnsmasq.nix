# dnsmasq configuration for the proxy guest: authoritative answers for the internal
# domain (route names point at the proxy, guest names at the guests), nothing else.
# Upstream servers, if any, are added by the NixOS module, never here.
let
  u = import ../util.nix;
in
plan:
let
  listen = plan.guests.${builtins.head plan.dnsGuestNames}.address;
in
u.lines (
  [
    "# Rendered by Homestack (lib/render/dnsmasq.nix) from inventory.toml. Do not edit."
    "listen-address=${listen}"
    "bind-interfaces"
    "domain-needed"
    "bogus-priv"
    "no-hosts"
    "local=/${plan.domain}/"
    "domain=${plan.domain}"
  ]
  ++ map (r: "host-record=${r.name},${r.address}") plan.dns
)
