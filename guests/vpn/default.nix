# `vpn`: the NetBird server (management, signal, relay, dashboard), logging in via PocketID.
{
  imports = [ ../../modules/services/netbird-server.nix ];
}
