# NixOS VM tests of Homestack (the Python test driver), wired into checks.x86_64-linux by
# flake.nix. They need a Linux machine with Nix and KVM (`hypervisor` needs nested KVM);
# they are kept evaluable everywhere else (nixos-shape evaluates every node and checks each
# test script). Test material lives in ./fixtures (make-fixtures.sh) and ../keys.
#   guests      every guest (auth, db, proxy, vpn) as a plain VM on one VLAN with the plan's
#               addresses and firewalls, started in the plan's boot order, each waited for
#               with its catalogue health probes; a client resolves and reaches PocketID
#               through Caddy.
#   relay       cloud-relay + homelab + proxy: a client on the public side reaches the proxy
#               through the WireGuard tunnel the home side dials.
#   hypervisor  homelab boots the real `db` MicroVM from the flake. Needs nested KVM, so
#               flake.nix keeps it out of `checks` (./nested.nix); `tools test hypervisor`.
#   rollback    a broken switch goes back to the previous generation (./rollback.nix).
{
  pkgs,
  plan,
  homestackModules,
  sops-nix,
  microvm,
  configurations,
  self,
}@args:
let
  inherit (pkgs) lib;
  fixtures = ./fixtures;
  net = plan.network;
  proxyAddress = plan.guests.proxy.address;
  tunnelNet = builtins.head (lib.splitString "/" plan.tunnel.cidr);
  guestNames = builtins.attrNames plan.guests;
  # What the guests test waits for on each guest: the units of its services and its health
  # probes, both from the catalogue through the plan.
  unitsOf = lib.genAttrs guestNames (g: plan.guests.${g}.units);
  probesOf = lib.genAttrs guestNames (g: map lib.escapeShellArgs (map (h: h.argv) plan.guests.${g}.health));

  # The nodes, on the example's plan (./nodes.nix).
  nodes = import ./nodes.nix args;
  machine = nodes.machine plan;
  guest = nodes.guest plan;
in
{
  rollback = import ./rollback.nix { inherit pkgs; };

  guests = pkgs.testers.runNixOSTest {
    name = "homestack-guests";
    nodes = lib.genAttrs guestNames guest // {
      # A LAN client; the plan's DNS guest is the proxy, whose dnsmasq the script asks.
      client = nodes.client plan;
    };
    # The guests in the plan's boot order, wave by wave: each machine's units (from the
    # catalogue) active, then each of its health probes (the argv deploy runs) passing.
    testScript = ''
      import json

      boot_order = json.loads(${builtins.toJSON (builtins.toJSON plan.bootOrder)})
      units = json.loads(${builtins.toJSON (builtins.toJSON unitsOf)})
      probes = json.loads(${builtins.toJSON (builtins.toJSON probesOf)})
      machines_by_name = {m.name: m for m in machines}

      client.start()
      for wave in boot_order:
          for name in wave:
              machines_by_name[name].start()
          for name in wave:
              machine = machines_by_name[name]
              with subtest(f"{name} is up: its units run and its health probes pass"):
                  for unit in units[name]:
                      machine.wait_for_unit(unit, timeout=300)
                  for probe in probes[name]:
                      machine.wait_until_succeeds(probe, timeout=300)

      with subtest("the client resolves id.${plan.domain} through dnsmasq"):
          answer = client.succeed("dig +short @${proxyAddress} id.${plan.domain}").strip()
          assert answer == "${proxyAddress}", answer

      with subtest("HTTPS through Caddy with the private CA; PocketID's discovery answers"):
          doc = client.wait_until_succeeds(
              "curl --fail --silent https://id.${plan.domain}/.well-known/openid-configuration",
              timeout=120,
          )
          assert json.loads(doc)["issuer"] == "https://id.${plan.domain}", doc

      with subtest("the NetBird dashboard and management API answer through Caddy"):
          client.wait_until_succeeds("curl --fail --silent https://vpn.${plan.domain}/", timeout=120)

      with subtest("auth reaches db; proxy cannot"):
          probe = "timeout 5 bash -c 'echo > /dev/tcp/${plan.guests.db.address}/5432'"
          auth.succeed(probe)
          proxy.fail(probe)
    '';
  };

  relay = pkgs.testers.runNixOSTest {
    name = "homestack-relay";
    nodes = {
      # VLAN 1 is the internet: the relay's public address, the client, the home uplink.
      cloud-relay = {
        imports = [
          (machine "cloud-relay")
          homestackModules.relay
        ];
        networking.interfaces.eth1.ipv4.addresses = [
          {
            address = plan.relay.publicAddress;
            prefixLength = 24;
          }
        ];
      };
      internet = {
        security.pki.certificateFiles = [ "${fixtures}/certs/ca.crt" ];
        networking.interfaces.eth1.ipv4.addresses = [
          {
            address = "203.0.113.20";
            prefixLength = 24;
          }
        ];
        environment.systemPackages = [ pkgs.curl ];
      };
      # The home side: dials the relay (no port forward at home) and routes to the guests.
      homelab = {
        imports = [
          (machine "homelab")
          homestackModules.wireguard
        ];
        virtualisation.vlans = [
          1
          2
        ];
        boot.kernel.sysctl."net.ipv4.conf.all.forwarding" = true;
        networking.interfaces.eth1.ipv4.addresses = [
          {
            address = "203.0.113.30";
            prefixLength = 24;
          }
        ];
        networking.interfaces.eth2.ipv4.addresses = [
          {
            address = net.gateway;
            prefixLength = net.prefix;
          }
        ];
      };
      # VLAN 2 is the guest network.
      proxy = {
        imports = [ (guest "proxy") ];
        virtualisation.vlans = [ 2 ];
        networking.interfaces.eth1.ipv4.routes = [
          {
            address = tunnelNet;
            prefixLength = plan.tunnel.prefix;
            via = net.gateway;
          }
        ];
      };
    };
    testScript = ''
      start_all()
      cloud_relay.wait_for_unit("wireguard-${plan.relay.interface}.service")
      homelab.wait_for_unit("wireguard-${plan.relay.interface}.service")
      proxy.wait_for_unit("caddy.service")

      with subtest("the home side dials out and the tunnel comes up"):
          homelab.wait_until_succeeds("ping -c1 -W2 ${plan.relay.address}", timeout=120)

      with subtest("a client on the public side reaches the proxy through the tunnel"):
          # TLS verifies against the private CA; auth is not in this test, so Caddy says 502.
          code = internet.succeed(
              "curl --silent --output /dev/null --write-out '%{http_code}' "
              "--resolve id.${plan.domain}:443:${plan.relay.publicAddress} https://id.${plan.domain}/"
          ).strip()
          assert code == "502", code
          code = internet.succeed(
              "curl --silent --output /dev/null --write-out '%{http_code}' "
              "-H 'Host: id.${plan.domain}' http://${plan.relay.publicAddress}/"
          ).strip()
          assert code == "308", code

      with subtest("nothing but the plan's forwards gets through"):
          # no DNAT for this port: the relay's own input chain refuses it
          internet.fail("timeout 5 bash -c 'echo > /dev/tcp/${plan.relay.publicAddress}/5432'")

      with subtest("the forward policy refuses a DNAT'd destination the plan does not name"):
          peer = "${plan.relay.peer.address}"
          public = "${plan.relay.publicAddress}"
          # the home side's sshd answers over the tunnel (from the relay itself: not forwarded)
          cloud_relay.succeed(f"timeout 5 bash -c 'echo > /dev/tcp/{peer}/22'")
          # A DNAT (and masquerade) the plan does not make, added by hand: public port 2222
          # to that sshd. Only the relay's forward chain stands between the internet and it.
          cloud_relay.succeed(
              "nft -f - <<'EOF'\n"
              "table ip homestack-test {\n"
              "  chain prerouting { type nat hook prerouting priority dstnat - 10; policy accept;\n"
              f"    tcp dport 2222 dnat to {peer}:22 }}\n"
              "  chain postrouting { type nat hook postrouting priority srcnat - 10; policy accept;\n"
              "    oifname \"${plan.relay.interface}\" masquerade }\n"
              "}\n"
              "EOF"
          )
          internet.fail(f"timeout 5 bash -c 'echo > /dev/tcp/{public}/2222'")
          # the same flow named in the forward set gets through: the refusal was the policy's
          element = f"'{{ {peer} . tcp . 22 }}'"
          cloud_relay.succeed(f"nft add element ip homestack-relay forwards {element}")
          internet.succeed(f"timeout 5 bash -c 'echo > /dev/tcp/{public}/2222'")
          cloud_relay.succeed(f"nft delete element ip homestack-relay forwards {element}")
          internet.fail(f"timeout 5 bash -c 'echo > /dev/tcp/{public}/2222'")
          cloud_relay.succeed("nft delete table ip homestack-test")
    '';
  };

  hypervisor = pkgs.testers.runNixOSTest {
    name = "homestack-hypervisor";
    nodes.homelab =
      { lib, ... }:
      {
        imports = [
          (machine "homelab")
          microvm.nixosModules.host
          homestackModules.hypervisor
        ];
        # One real guest is enough to prove the wiring, and fits in the test VM.
        homestack.hypervisor.guests = [ "db" ];
        homestack.guestConfigurations = {
          inherit (configurations) db;
        };
        # The mesh is not part of this test.
        services.netbird.clients = lib.mkForce { };
        virtualisation = {
          memorySize = plan.guests.db.memory + 2048;
          cores = 2;
          diskSize = 8192;
          # the disk the test turns into the ZFS pool
          emptyDiskImages = [ 4096 ];
          # nested virtualisation, as microvm.nix's own checks do
          qemu.options = [
            "-cpu"
            "kvm64,+svm,+vmx"
          ];
        };
      };
    testScript = ''
      homelab.start()
      homelab.wait_for_unit("multi-user.target")
      homelab.succeed("zpool create -f ${plan.hosts.homelab.zfs.pool} /dev/vdb")

      with subtest("the guest's dataset and host key are in place before it boots"):
          # the units that prepare the guest, started alone: the guest is not running yet
          homelab.succeed("systemctl reset-failed")
          homelab.succeed("systemctl start homestack-host-key-db.service")
          homelab.fail("systemctl is-active --quiet microvm@db.service")
          homelab.succeed("zfs list ${plan.guests.db.state.dataset}")
          homelab.succeed("test -s ${plan.guests.db.state.hostPath}/etc/ssh/ssh_host_ed25519_key")
          # and the guest's unit waits for them (what a cold boot relies on)
          after = homelab.succeed("systemctl show --property=After --value microvm@db.service")
          requires = homelab.succeed("systemctl show --property=Requires --value microvm@db.service")
          for unit in ("homestack-state-db.service", "homestack-host-key-db.service"):
              assert unit in after.split() and unit in requires.split(), (unit, after, requires)
          homelab.succeed("systemctl start microvm@db.service")

      with subtest("the db MicroVM boots and answers on its address"):
          homelab.wait_for_unit("microvm@db.service", timeout=1200)
          homelab.wait_until_succeeds("ping -c1 -W2 ${plan.guests.db.address}", timeout=900)
          keys = homelab.wait_until_succeeds(
              "ssh-keyscan -t ed25519 ${plan.guests.db.address} 2>/dev/null | grep ssh-ed25519",
              timeout=300,
          )
          assert "${builtins.elemAt (lib.splitString " " plan.guests.db.hostKey) 1}" in keys, keys
    '';
    meta.timeout = 1800;
  };
}
