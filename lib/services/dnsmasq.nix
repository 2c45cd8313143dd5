# dnsmasq, internal DNS for the domain: port 53 over UDP and TCP on the guest's address
# (the rendered config binds it with listen-address and bind-interfaces).
{
  description = "dnsmasq, internal DNS for the domain";
  module = "dnsmasq.nix";
  units = [ "dnsmasq.service" ];
  ports = [
    { name = "dns"; port = 53; proto = "udp"; }
    { name = "dns-tcp"; port = 53; proto = "tcp"; }
  ];
  health = [
    { kind = "tcp"; port = 53; }
  ];
  secrets = { };
  persist = [ ];
  needs = [ ];
}
