"""The lab: the rendered stack on real daemons in network namespaces.

`tools lab up` builds one namespace per guest, one for the hypervisor's bridge and one for a
LAN client, then runs Caddy, dnsmasq, PostgreSQL and the nftables rule sets exactly as `lib/`
rendered them; `tools lab test` checks names, TLS, the whole allow matrix and database logins.
"""
