# `proxy`: Caddy terminates TLS for every route; dnsmasq answers the domain's names. The
# service modules come from the inventory's `services`; settings of this guest go here
# (in acme-dns01 mode: homestack.caddy.package, see docs/nixos.md).
{ }
