# Headscale's configuration and ACL policy for the mesh guest, from the plan.
#
# config: the settings of nixpkgs' services.headscale (nixos/modules/services/networking/
# headscale.nix; keys as in juanfont/headscale config-example.yaml): server_url is the
# guest's route through the proxy; the embedded DERP server with STUN on the catalogue's
# port, which the relay forwards (the guest's `public`); SQLite on the guest's state;
# MagicDNS under mesh.<domain> (Headscale refuses a base_domain that contains
# server_url's host) with the internal domain searched and answered by the stack's
# dnsmasq; OIDC login through PocketID (the pocket-id guest's route is the issuer).
#
# policy: the ACL policy (HuJSON; JSON is HuJSON). Headscale cannot use OIDC groups in
# ACLs, so it is written from the inventory: each user is "<name>@" (Headscale's user
# syntax), admins are group:admins, each host joins with a pre-auth key carrying
# tag:host-<name>, and each rule of the plan's `input` from the mesh becomes one ACL
# entry from the admins to that host's tag and port. Nothing else is allowed (an ACL
# policy denies what it does not accept).
let
  u = import ../util.nix;
  q = import ../quote.nix;
  services = import ../services.nix;
  inherit (builtins) attrNames elem filter head listToAttrs toJSON;

  hostTag = h: "tag:host-${h}";
  userRef = n: "${n}@";

  routeOf =
    plan: service: what:
    let
      rs = filter (r: elem service plan.guests.${r.guest}.services) plan.routes;
    in
    if rs == [ ] then throw "headscale: no guest runs ${service} with a route (${what})" else head rs;

  defaults = {
    clientId = "headscale";
    # sops-nix's default path for the secret named headscale/oidc-client-secret.
    clientSecretPath = "/run/secrets/headscale/oidc-client-secret";
    policyPath = "/etc/headscale/policy.hujson";
  };

  config =
    plan: args:
    let
      a = defaults // args;
      guest = plan.guests.${plan.mesh.guest};
      ports = guest.portOf.headscale;
      server = routeOf plan "headscale" "its server_url";
      issuer = routeOf plan "pocket-id" "the OIDC issuer";
      address = q.ipv4 "guests.${guest.name}.address" guest.address;
    in
    {
      server_url = "https://${q.dnsName "route name" server.fqdn}";
      listen_addr = "${address}:${toString ports.http}";
      metrics_listen_addr = "127.0.0.1:${toString ports.metrics}";
      # Not bound: remote gRPC needs TLS here or grpc_allow_insecure (hscontrol/app.go).
      grpc_listen_addr = "127.0.0.1:50443";
      grpc_allow_insecure = false;
      # TLS ends at the proxy.
      tls_cert_path = null;
      tls_key_path = null;
      tls_letsencrypt_hostname = "";
      derp = {
        server = {
          enabled = true;
          region_id = 999;
          region_code = "homestack";
          region_name = "Homestack";
          stun_listen_addr = "0.0.0.0:${toString ports.stun}";
          automatically_add_embedded_derp_region = true;
        }
        # Where clients reach STUN and DERP from the internet: the relay's public address.
        // (if plan.relay != null then { ipv4 = plan.relay.publicAddress; } else { });
        # Only the embedded region: no map fetched from Tailscale's servers.
        urls = [ ];
        paths = [ ];
        auto_update_enabled = false;
      };
      database = {
        type = "sqlite";
        sqlite = {
          path = "/var/lib/headscale/db.sqlite";
          write_ahead_log = true;
        };
      };
      dns = {
        magic_dns = true;
        base_domain = "mesh.${plan.domain}";
        # Keep the hosts' own resolvers; send the internal domain to the stack's dnsmasq.
        override_local_dns = false;
        search_domains = [ plan.domain ];
        nameservers = {
          global = [ ];
          split = if plan.dnsServers == [ ] then { } else { ${plan.domain} = plan.dnsServers; };
        };
      };
      oidc = {
        only_start_if_oidc_is_available = true;
        issuer = "https://${issuer.fqdn}";
        client_id = a.clientId;
        client_secret_path = a.clientSecretPath;
        scope = [
          "openid"
          "profile"
          "email"
        ];
        pkce = {
          enabled = true;
          method = "S256";
        };
      };
      policy = {
        mode = "file";
        path = a.policyPath;
      };
      log = {
        level = "info";
        format = "text";
      };
      logtail.enabled = false;
    };

  # The policy as a Nix value (toJSON gives the file).
  policy =
    plan:
    let
      meshRules = filter (r: r.from == "mesh") plan.input;
      byDst = builtins.groupBy (r: "${r.proto}") meshRules;
    in
    {
      groups = {
        "group:admins" = map userRef plan.admins;
      };
      # The hosts that run the mesh client: the hypervisors (modules/hypervisor.nix).
      tagOwners = listToAttrs (
        map (h: { name = hostTag h; value = [ "group:admins" ]; }) (
          filter (h: plan.hosts.${h}.role == "hypervisor") (attrNames plan.hosts)
        )
      );
      acls = map (proto: {
        action = "accept";
        src = [ "group:admins" ];
        inherit proto;
        dst = map (r: "${hostTag r.host}:${toString r.port}") byDst.${proto};
      }) (attrNames byDst);
      ssh = [ ];
    };

  policyFile =
    plan:
    u.lines [
      "// Rendered by Homestack (lib/render/headscale.nix) from inventory.toml. Do not edit."
      "// Users are <name>@, hosts join with tag:host-<name>; only what is listed is allowed."
      (toJSON (policy plan))
    ];
in
{
  inherit
    config
    policy
    policyFile
    hostTag
    defaults
    ;
}
