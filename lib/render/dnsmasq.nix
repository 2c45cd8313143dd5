# dnsmasq configuration for the proxy guest: authoritative answers for the internal
# domain (route names point at the proxy, guest names at the guests), nothing else.
# Upstream servers, if any, are added by the NixOS module, never here.
# dnsmasq's files have no quoting: every value is checked (lib/quote.nix) and anything
# but a plain DNS name or IPv4 address is refused rather than rendered.
let
  u = import ../util.nix;
  q = import ../quote.nix;
in
plan:
let
  first = builtins.head plan.dnsGuestNames;
  listen = q.ipv4 "guests.${first}.address" plan.guests.${first}.address;
  domain = q.dnsName "domain" plan.domain;
  record = r: "host-record=${q.dnsName "dns name" r.name},${q.ipv4 "dns record ${q.show r.name} address" r.address}";
in
u.lines (
  [
    "# Rendered by Homestack (lib/render/dnsmasq.nix) from inventory.toml. Do not edit."
    "listen-address=${listen}"
    "bind-interfaces"
    "domain-needed"
    "bogus-priv"
    "no-hosts"
    "local=/${domain}/"
    "domain=${domain}"
  ]
  ++ map record plan.dns
)
