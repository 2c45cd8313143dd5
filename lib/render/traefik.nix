# Traefik's configuration for the proxy guest, from the same routes as the Caddyfile
# (lib/render/caddy.nix): the static configuration (entry points, the ACME resolver in
# acme-dns01 mode) and the dynamic one for the file provider (one router and one service
# per route, the private CA's leaf as the default certificate in private-ca mode).
#
#   * paths: Caddy's "/api/*" and "/relay*" are prefixes (PathPrefix), a path without a
#     wildcard is exact (Path); a wildcard elsewhere has no Traefik rule and is refused;
#   * h2c backends: an `h2c://` server URL (Traefik's loadBalancer speaks HTTP/2 cleartext);
#   * WebSocket: Traefik forwards Upgrade requests by default, nothing to say;
#   * priority: Traefik orders routers by rule length, so a path rule wins over the bare
#     Host rule of the same name, as Caddy's `handle <path>` blocks do.
#
# `problems` is the check Traefik lacks (it drops a router that names a missing service,
# entry point or resolver at run time, with a log line): every router must name what
# exists. default.nix refuses a rendering with problems; tests plant a broken router.
let
  u = import ../util.nix;
  q = import ../quote.nix;
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    genList
    length
    listToAttrs
    match
    stringLength
    substring
    ;

  # A value between backticks in a rule: Traefik's rule parser (vulcand/predicate) ends the
  # literal at the next backtick and has no escape for it.
  ruleValue =
    what: s:
    if match "[A-Za-z0-9._~/%*:-]+" s == null then q.refuse what s "not a name or path Traefik's rule syntax can hold" else "`${s}`";

  optionalAttrs = cond: set: if cond then set else { };
  resolverName = "cloudflare";
  entryWeb = "web";
  entrySecure = "websecure";

  render =
    plan:
    let
      proxyAddress = q.ipv4 "guests.${plan.proxy}.address" plan.guests.${plan.proxy}.address;
      acme = plan.certificates.mode == "acme-dns01";
      indexed = genList (i: { inherit i; r = builtins.elemAt plan.routes i; }) (length plan.routes);
      routerName = x: "${x.r.name}-${toString x.i}";
      pathRule =
        r:
        let
          what = "route ${q.show r.fqdn} path";
          p = r.path;
          n = stringLength p;
          last = substring (n - 1) 1 p;
          stem = substring 0 (n - 1) p;
        in
        if p == "/" || p == "/*" then
          null
        else if last == "*" && match ".*\\*.*" stem == null then
          "PathPrefix(${ruleValue what stem})"
        else if match ".*\\*.*" p == null then
          "Path(${ruleValue what p})"
        else
          q.refuse what p "has a wildcard before its end, which Traefik's PathPrefix cannot express";
      rule =
        r:
        let
          host = "Host(${ruleValue "route name" (q.dnsName "route name" r.fqdn)})";
          path = pathRule r;
        in
        if path == null then host else "${host} && ${path}";
      url =
        r:
        let
          what = "route ${q.show r.fqdn} upstream";
          m = match "([0-9.]+):([0-9]+)" r.upstream;
          checked =
            if m != null && q.ipv4 what (builtins.head m) != null && q.port what (builtins.fromJSON (builtins.elemAt m 1)) != null then
              r.upstream
            else
              q.refuse what r.upstream "not <IPv4 address>:<port>";
        in
        "${if r.h2c then "h2c" else "http"}://${checked}";
      tls =
        if acme then
          {
            certResolver = resolverName;
            domains = [
              {
                main = plan.domain;
                sans = [ "*.${plan.domain}" ];
              }
            ];
          }
        else
          { };
    in
    {
      static = {
        global = {
          checkNewVersion = false;
          sendAnonymousUsage = false;
        };
        log.level = "INFO";
        entryPoints = {
          ${entryWeb} = {
            address = "${proxyAddress}:80";
            http.redirections.entryPoint = {
              to = entrySecure;
              scheme = "https";
              permanent = true;
            };
          };
          ${entrySecure}.address = "${proxyAddress}:443";
        };
      }
      // optionalAttrs acme {
        certificatesResolvers.${resolverName}.acme = {
          email = plan.certificates.acmeEmail;
          storage = "/var/lib/traefik/acme.json";
          # Traefik's built-in lego provider reads CF_DNS_API_TOKEN from the environment.
          dnsChallenge = {
            provider = "cloudflare";
            resolvers = [ "1.1.1.1:53" ];
          };
        };
      };
      dynamic = {
        http = {
          routers = listToAttrs (
            map (x: {
              name = routerName x;
              value = {
                rule = rule x.r;
                entryPoints = [ entrySecure ];
                service = routerName x;
                inherit tls;
              };
            }) indexed
          );
          services = listToAttrs (
            map (x: {
              name = routerName x;
              value.loadBalancer = {
                servers = [ { url = url x.r; } ];
                passHostHeader = true;
              };
            }) indexed
          );
        };
      }
      // optionalAttrs (!acme) {
        # Fixed paths from lib/plan.nix (the leaf from `tools certs issue`, the key from sops).
        tls = {
          certificates = [
            {
              inherit (plan.certificates) certFile keyFile;
              stores = [ "default" ];
            }
          ];
          stores.default.defaultCertificate = { inherit (plan.certificates) certFile keyFile; };
        };
      };
    };

  # problems { static, dynamic } -> [ "traefik: …" ]: routers naming a service, entry point,
  # certificate resolver, TLS options or store that the configuration does not define.
  problems =
    { static, dynamic }:
    let
      routers = dynamic.http.routers or { };
      services = dynamic.http.services or { };
      entryPoints = attrNames (static.entryPoints or { });
      resolvers = attrNames (static.certificatesResolvers or { });
      tlsOptions = [ "default" ] ++ attrNames (dynamic.tls.options or { });
      stores = [ "default" ] ++ attrNames (dynamic.tls.stores or { });
      # "name@provider" refers to another provider (api@internal): not ours to check.
      local = s: match ".*@.*" s == null;
      router =
        name:
        let
          r = routers.${name};
          at = "traefik: http.routers.${name}";
        in
        u.optional (!(r ? service)) "${at}: names no service"
        ++ u.optional (r ? service && local r.service && !(services ? ${r.service})) "${at}.service: ${q.show r.service} is not a service of http.services"
        ++ u.optional (!(r ? rule)) "${at}: has no rule"
        ++ map (e: "${at}.entryPoints: ${q.show e} is not an entry point of the static configuration (${concatStringsSep ", " entryPoints})") (
          filter (e: !(elem e entryPoints)) (r.entryPoints or [ ])
        )
        ++ u.optional (
          (r.tls or { }) ? certResolver && !(elem r.tls.certResolver resolvers)
        ) "${at}.tls.certResolver: ${q.show r.tls.certResolver} is not a certificatesResolvers entry of the static configuration"
        ++ u.optional (
          (r.tls or { }) ? options && local r.tls.options && !(elem r.tls.options tlsOptions)
        ) "${at}.tls.options: ${q.show r.tls.options} is not in tls.options";
      service =
        name:
        let
          s = services.${name};
          at = "traefik: http.services.${name}";
          servers = s.loadBalancer.servers or [ ];
        in
        u.optional (servers == [ ]) "${at}.loadBalancer.servers: empty"
        ++ map (v: "${at}.loadBalancer.servers: ${q.show (v.url or null)} is not an http://, https:// or h2c:// URL") (
          filter (v: match "(http|https|h2c)://[^/]+/?" (v.url or "") == null) servers
        );
      certs = u.concatMap (
        c:
        map (st: "traefik: tls.certificates: store ${q.show st} is not in tls.stores") (filter (st: !(elem st stores)) (c.stores or [ ]))
      ) (dynamic.tls.certificates or [ ]);
    in
    u.concatMap router (attrNames routers) ++ u.concatMap service (attrNames services) ++ certs;
in
{
  inherit render problems;
}
