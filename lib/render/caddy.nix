# The Caddyfile for the proxy guest: one site per route name, TLS from the wildcard
# certificate (private-ca) or the one security.acme obtained by DNS-01 (acme-dns01), plain HTTP redirected to HTTPS.
# Site blocks only: global options belong to whoever runs Caddy (the NixOS module, the lab).
# Every token taken from the plan is quoted (lib/quote.nix); names and addresses are also
# checked, because Caddy reads meaning into a site address or an upstream beyond its text.
let
  u = import ../util.nix;
  q = import ../quote.nix;
  inherit (builtins) concatStringsSep filter;
in
plan:
let
  bind = q.caddy "guests.${plan.proxy}.address" (q.ipv4 "guests.${plan.proxy}.address" plan.guests.${plan.proxy}.address);
  names = plan.certificates.routeNames;
  routesByName = builtins.groupBy (r: r.fqdn) plan.routes;
  # A site address is more than a token to Caddy (a comma splits it, "(x)" makes a snippet,
  # a scheme or port changes the site): only a DNS name is rendered.
  site' = scheme: fqdn: q.caddy "route ${q.show fqdn}" (scheme + q.dnsName "route name" fqdn);
  # Both modes serve files: the private CA's leaf, or what security.acme (lego, DNS-01)
  # obtained; the plan says where each lives. Stock Caddy needs no DNS plugin for this.
  # Fixed paths from lib/plan.nix, not from the inventory; the lab replaces these two
  # tokens as they are (tools/homestack/lab/overlay.py).
  tls = [ "\ttls ${plan.certificates.certFile} ${plan.certificates.keyFile}" ];
  # "<IPv4>:<port>", nothing else: a scheme, a path or a placeholder would change where
  # the proxy sends requests.
  upstream =
    r:
    let
      what = "route ${q.show r.fqdn} upstream";
      m = builtins.match "([0-9.]+):([0-9]+)" r.upstream;
      checked =
        if m != null && q.ipv4 what (builtins.head m) != null && q.port what (builtins.fromJSON (builtins.elemAt m 1)) != null then
          r.upstream
        else
          q.refuse what r.upstream "not <IPv4 address>:<port>";
    in
    q.caddy what (if r.h2c then "h2c://${checked}" else checked);
  # A matcher token that does not start with "/" is read as a named matcher (@…), "*" or
  # the directive's argument (caddyconfig/httpcaddyfile/httptype.go, matcherSetFromMatcherToken).
  path =
    r:
    let
      what = "route ${q.show r.fqdn} path";
    in
    if u.hasPrefix "/" r.path then q.caddy what r.path else q.refuse what r.path "must start with /";
  site =
    fqdn:
    let
      rs = routesByName.${fqdn};
      sub = filter (r: r.path != "/") rs;
      root = filter (r: r.path == "/") rs;
    in
    [
      "${site' "" fqdn} {"
      "\tbind ${bind}"
      "\timport homestack_tls"
    ]
    ++ map (r: "\thandle ${path r} {\n\t\treverse_proxy ${upstream r}\n\t}") sub
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
      "${concatStringsSep " " (map (site' "http://") names)} {"
      "\tbind ${bind}"
      "\tredir https://{host}{uri} 308"
      "}"
      ""
    ]
    ++ u.concatMap site names
  )
