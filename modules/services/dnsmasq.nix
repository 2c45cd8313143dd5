# dnsmasq on the proxy guest: answers the domain's names with the guests' bridge addresses
# (every route name points at the proxy), from the plan's rendered configuration.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (config.homestack) plan;
in
{
  services.dnsmasq = {
    enable = true;
    # The plan's file holds the domain's records and the listen address; NixOS's settings
    # include it (a list: the module adds its own conf-file entries).
    settings = {
      conf-file = [ "${pkgs.writeText "homestack-dnsmasq.conf" plan.artifacts.dnsmasq}" ];
      # Names outside the domain (local=/<domain>/ keeps it inside) go to these upstreams
      # instead of resolv.conf, which points back at this dnsmasq.
      no-resolv = true;
      server = lib.mkDefault [
        "9.9.9.9"
        "1.1.1.1"
      ];
    };
    # networkd turns systemd-resolved on by default and its stub listener holds
    # 127.0.0.53:53. The rendered config binds only the guest's address (listen-address
    # with bind-interfaces), so both coexist; the guest's own lookups go through resolved
    # to this dnsmasq (the guest network's DNS server), so 127.0.0.1 is not needed.
    resolveLocalQueries = false;
  };

  # listen-address= binds the guest's address; do not depend on networkd having set it yet.
  boot.kernel.sysctl."net.ipv4.ip_nonlocal_bind" = 1;
}
