# The services a guest can run: the ports each listens on and how to tell it is healthy.
# Adding a service here (and a module under modules/services/) is all it takes.
{
  pocket-id = {
    description = "PocketID, the OIDC identity provider";
    ports = [ { port = 1411; proto = "tcp"; } ];
    health = [ { kind = "http"; port = 1411; path = "/.well-known/openid-configuration"; } ];
  };
  netbird-server = {
    description = "NetBird management, signal, relay and dashboard";
    ports = [
      { port = 8080; proto = "tcp"; }
      { port = 33073; proto = "tcp"; }
      { port = 10000; proto = "tcp"; }
      { port = 33080; proto = "tcp"; }
      { port = 3478; proto = "udp"; }
    ];
    health = [ { kind = "tcp"; port = 33073; } ];
  };
  caddy = {
    description = "Caddy, the TLS reverse proxy";
    ports = [
      { port = 80; proto = "tcp"; }
      { port = 443; proto = "tcp"; }
    ];
    health = [ { kind = "tcp"; port = 443; } ];
  };
  dnsmasq = {
    description = "dnsmasq, internal DNS for the domain";
    ports = [
      { port = 53; proto = "udp"; }
      { port = 53; proto = "tcp"; }
    ];
    health = [ { kind = "tcp"; port = 53; } ];
  };
  postgresql = {
    description = "PostgreSQL";
    ports = [ { port = 5432; proto = "tcp"; } ];
    health = [ { kind = "tcp"; port = 5432; } ];
  };
}
