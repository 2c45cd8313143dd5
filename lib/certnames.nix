# Which names the proxy's certificate must carry so that browsers accept it (builtins only).
#
# Browsers refuse a wildcard whose parent is a public suffix: Chromium's
# X509Certificate::VerifyHostname (net/cert/x509_certificate.cc) allows `*.<parent>` only
# when <parent> is longer than its registry under the ICANN section of the Public Suffix
# List, and treats an unknown top-level domain as a registry too ("prevent *.com or
# *.co.uk ... unknown top-level domains are also implicitly prevented"). home.arpa is on
# that list, so `*.home.arpa` fails with NET::ERR_CERT_COMMON_NAME_INVALID while
# `id.home.arpa` or `*.lab.home.arpa` load. The list's rules are in
# data/public-suffixes.nix (see data/PROVENANCE.md).
let
  inherit (builtins)
    filter
    head
    listToAttrs
    match
    ;
  u = import ./util.nix;

  rules = listToAttrs (
    map (rule: {
      name = rule;
      value = true;
    }) (import ./data/public-suffixes.nix)
  );

  # "a.b.c" -> "b.c"; a single label has no parent.
  parentOf =
    name:
    let
      m = match "[^.]+[.](.+)" name;
    in
    if m == null then null else head m;

  # Whether `name` is a public suffix under the list's rules: a listed name, a name matched
  # by a listed wildcard (`*.ck`) unless an exception (`!www.ck`) frees it, or a single
  # label (every top-level domain, known or not, is a suffix by the list's default rule).
  isPublicSuffix =
    name:
    let
      parent = parentOf name;
    in
    parent == null || rules ? ${name} || (rules ? "*.${parent}" && !(rules ? "!${name}"));

  # Whether browsers accept a certificate name `*.<parent>`.
  wildcardAccepted = parent: !(isPublicSuffix parent);

  # The leaf's names in private-ca mode: every route and guest name explicitly (first
  # route first: it becomes the subject's CN), plus `*.<domain>` where browsers accept it,
  # so a new route works before the next `tools certs issue`.
  leafNames =
    {
      domain,
      routeNames,
      guestNames,
    }:
    u.uniqueOrdered (routeNames ++ guestNames) ++ u.optional (wildcardAccepted domain) "*.${domain}";

  # The parents of `names` that are public suffixes: a wildcard directly under one of these
  # is no use to a browser, so `tools certs check` does not count it as covering a name.
  publicSuffixParents =
    names: u.uniqueOrdered (filter (p: p != null && isPublicSuffix p) (map parentOf names));

  # The inventory's certificate errors, each "KEY: message" (called by lib/validate.nix).
  errors =
    inv:
    let
      domain = inv.domain or null;
      mode = (inv.certificates or { }).mode or "private-ca";
    in
    u.optional (mode == "acme-dns01" && builtins.isString domain && isPublicSuffix domain)
      "certificates.mode: acme-dns01 cannot work for domain ${domain}: it is a public suffix (Public Suffix List), so no public CA issues *.${domain} or any name under it for you; use mode = \"private-ca\", or a domain you own (e.g. home.example.com)";
in
{
  inherit
    isPublicSuffix
    wildcardAccepted
    leafNames
    publicSuffixParents
    errors
    ;
}
