# The services a guest can run: the ports each listens on (named, so modules can find
# theirs) and how to tell it is healthy.
# Adding a service here (and a module under modules/services/) is all it takes.
{
  pocket-id = {
    description = "PocketID, the OIDC identity provider";
    ports = [ { name = "http"; port = 1411; proto = "tcp"; } ];
    health = [ { kind = "http"; port = 1411; path = "/.well-known/openid-configuration"; } ];
  };
  netbird-server = {
    description = "NetBird management, signal, relay and dashboard";
    ports = [
      { name = "dashboard"; port = 8080; proto = "tcp"; }
      { name = "management"; port = 33073; proto = "tcp"; }
      { name = "signal"; port = 10000; proto = "tcp"; }
      { name = "relay"; port = 33080; proto = "tcp"; }
      { name = "stun"; port = 3478; proto = "udp"; }
    ];
    health = [ { kind = "tcp"; port = 33073; } ];
  };
  caddy = {
    description = "Caddy, the TLS reverse proxy";
    ports = [
      { name = "http"; port = 80; proto = "tcp"; }
      { name = "https"; port = 443; proto = "tcp"; }
    ];
    health = [ { kind = "tcp"; port = 443; } ];
  };
  dnsmasq = {
    description = "dnsmasq, internal DNS for the domain";
    ports = [
      { name = "dns"; port = 53; proto = "udp"; }
      { name = "dns-tcp"; port = 53; proto = "tcp"; }
    ];
    health = [ { kind = "tcp"; port = 53; } ];
  };
  postgresql = {
    description = "PostgreSQL";
    ports = [ { name = "postgresql"; port = 5432; proto = "tcp"; } ];
    health = [ { kind = "tcp"; port = 5432; } ];
  };
}
