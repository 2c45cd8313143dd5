"""Certificates for the internal domain.

In `private-ca` mode Homestack runs its own name-constrained root CA (key kept only in
sops) and issues the proxy's leaf; in `acme-dns01` mode Caddy gets a public
certificate itself and this package only checks that it has what it needs.
"""
