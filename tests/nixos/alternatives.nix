# NixOS VM tests of the alternatives (docs/alternatives.md), each on the example switched
# to it (tests/inventories/alternatives/). Like ./default.nix they need Nix and KVM, and are
# kept evaluable everywhere else (nixos-shape evaluates their nodes and test scripts).
#   traefik    auth, db and a proxy running Traefik: a LAN client resolves id.<domain>,
#              reaches PocketID over HTTPS with the private CA, and is redirected from HTTP.
#   headscale  auth, db, proxy (Caddy) and vpn running Headscale; homelab joins the tailnet
#              with a pre-auth key Headscale issues for its tag, through the proxy.
{
  pkgs,
  homestackLib,
  homestackModules,
  sops-nix,
  self,
}@args:
let
  inherit (pkgs) lib;
  fixtures = ./fixtures;
  planOf = name: homestackLib.mkPlan (../inventories/alternatives + "/${name}.toml");
  # The nodes, as ./default.nix's (./nodes.nix).
  inherit (import ./nodes.nix args) machine guest client;

  traefikPlan = planOf "traefik";
  headscalePlan = planOf "headscale";
in
{
  alternative-traefik =
    let
      plan = traefikPlan;
      proxyAddress = plan.guests.${plan.proxy}.address;
    in
    pkgs.testers.runNixOSTest {
      name = "homestack-alternative-traefik";
      nodes = lib.genAttrs [ "auth" "db" "proxy" ] (guest plan) // {
        client = client plan;
      };
      testScript = ''
        import json

        start_all()
        db.wait_for_unit("postgresql.service")
        auth.wait_for_unit("pocket-id.service")
        proxy.wait_for_unit("traefik.service")

        with subtest("Traefik binds the plan's entry points on the proxy's address"):
            proxy.wait_for_open_port(443, "${proxyAddress}")
            proxy.wait_for_open_port(80, "${proxyAddress}")

        with subtest("HTTPS through Traefik with the private CA; PocketID's discovery answers"):
            doc = client.wait_until_succeeds(
                "curl --fail --silent https://id.${plan.domain}/.well-known/openid-configuration",
                timeout=120,
            )
            assert json.loads(doc)["issuer"] == "https://id.${plan.domain}", doc

        with subtest("plain HTTP is redirected to HTTPS"):
            location = client.succeed(
                "curl --silent --output /dev/null --write-out '%{redirect_url}' "
                "http://id.${plan.domain}/"
            ).strip()
            assert location == "https://id.${plan.domain}/", location

        with subtest("a route whose guest is down answers 502, not another route's backend"):
            code = client.succeed(
                "curl --silent --output /dev/null --write-out '%{http_code}' "
                "https://vpn.${plan.domain}/api/users"
            ).strip()
            assert code == "502", code
      '';
    };

  alternative-headscale =
    let
      plan = headscalePlan;
      vpnRoute = lib.findFirst (r: r.guest == plan.mesh.guest) null plan.routes;
      tag = (import ../../lib/render/headscale.nix).hostTag "homelab";
    in
    pkgs.testers.runNixOSTest {
      name = "homestack-alternative-headscale";
      nodes = lib.genAttrs [ "auth" "db" "proxy" ] (guest plan) // {
        vpn = {
          imports = [ (guest plan "vpn") ];
          homestack.secrets.file = "${fixtures}/alternatives/vpn-headscale.yaml";
        };
        # The hypervisor's mesh side only: its Tailscale client, on the guest network's
        # gateway address (the MicroVMs themselves are not part of this test).
        homelab = {
          imports = [
            (machine plan "homelab")
            homestackModules.tailscale-client
          ];
          homestack.secrets.file = "${fixtures}/alternatives/homelab-headscale.yaml";
          networking.interfaces.eth1.ipv4.addresses = [
            {
              address = plan.network.gateway;
              prefixLength = plan.network.prefix;
            }
          ];
          environment.systemPackages = [ pkgs.jq ];
        };
      };
      testScript = ''
        import json

        start_all()
        db.wait_for_unit("postgresql.service")
        auth.wait_for_unit("pocket-id.service")
        proxy.wait_for_unit("caddy.service")

        with subtest("Headscale starts once PocketID's discovery answers through the proxy"):
            vpn.wait_for_unit("headscale.service", timeout=300)
            vpn.wait_until_succeeds("curl --fail --silent http://${plan.guests.vpn.address}:8080/health", timeout=120)
            homelab.wait_until_succeeds("curl --fail --silent https://${vpnRoute.fqdn}/health", timeout=120)

        with subtest("the ACL policy from the plan is the one Headscale loaded"):
            vpn.succeed("test -s /etc/headscale/policy.hujson")
            vpn.succeed("grep -q '${tag}' /etc/headscale/policy.hujson")

        with subtest("homelab joins with a pre-auth key Headscale issues for its tag"):
            vpn.succeed("headscale users create hosts")
            users = json.loads(vpn.succeed("headscale users list --output json"))
            user = next(u for u in users if u["name"] == "hosts")
            key = json.loads(vpn.succeed(
                f"headscale preauthkeys create --user {user['id']} --tags ${tag} --expiration 1h --output json"
            ))["key"]
            homelab.succeed(f"printf %s '{key}' > /run/secrets/headscale/preauth-key")
            homelab.succeed("systemctl restart tailscaled-autoconnect.service")
            homelab.wait_until_succeeds(
                "tailscale status --json | jq -e '.BackendState == \"Running\"'", timeout=180
            )
            homelab.succeed("ip link show ${plan.mesh.interface}")
            nodes = json.loads(vpn.succeed("headscale nodes list --output json"))
            assert any("${tag}" in json.dumps(n) for n in nodes), nodes
      '';
    };
}
