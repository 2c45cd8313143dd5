# The Caddyfile for the proxy guest: one site per route name, TLS from the wildcard
# certificate (private-ca) or the one security.acme obtained by DNS-01 (acme-dns01), plain HTTP redirected to HTTPS.
# Site blocks only: global options belong to whoever runs Caddy (the NixOS module, the lab).
let
  u = import ../util.nix;
  inherit (builtins) concatStringsSep filter;
in
plan:
let
  bind = plan.guests.${plan.proxy}.address;
  names = plan.certificates.routeNames;
  routesByName = builtins.groupBy (r: r.fqdn) plan.routes;
  # Both modes serve files: the private CA's leaf, or what security.acme (lego, DNS-01)
  # obtained; the plan says where each lives. Stock Caddy needs no DNS plugin for this.
  tls = [ "\ttls ${plan.certificates.certFile} ${plan.certificates.keyFile}" ];
  upstream = r: if r.h2c then "h2c://${r.upstream}" else r.upstream;
  site =
    fqdn:
    let
      rs = routesByName.${fqdn};
      sub = filter (r: r.path != "/") rs;
      root = filter (r: r.path == "/") rs;
    in
    [
      "${fqdn} {"
      "\tbind ${bind}"
      "\timport homestack_tls"
    ]
    ++ map (r: "\thandle ${r.path} {\n\t\treverse_proxy ${upstream r}\n\t}") sub
    ++ map (r: if sub == [ ] then "\treverse_proxy ${upstream r}" else "\thandle {\n\t\treverse_proxy ${upstream r}\n\t}") root
    ++ [
      "}"
      ""
    ];
in
if plan.proxy == null then
  ""
else
  u.lines (
    [
      "# Rendered by Homestack (lib/render/caddy.nix) from inventory.toml. Do not edit."
      ""
      "(homestack_tls) {"
    ]
    ++ tls
    ++ [
      "}"
      ""
    ]
    ++ u.optionals (names != [ ]) [
      "${concatStringsSep ", " (map (n: "http://${n}") names)} {"
      "\tbind ${bind}"
      "\tredir https://{host}{uri} 308"
      "}"
      ""
    ]
    ++ u.concatMap site names
  )
