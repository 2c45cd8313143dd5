# `proxy`: Caddy terminates TLS for every route; dnsmasq answers the domain's names.
{
  imports = [
    ../../modules/services/caddy.nix
    ../../modules/services/dnsmasq.nix
  ];
}
