# `vpn`: the NetBird server (management, signal, relay, dashboard), logging in via PocketID.
# Its service module comes from the inventory's `services`; settings of this guest go here
# (homestack.netbird.clientId, the OIDC client made in PocketID).
{ }
