# Quoting for the formats lib/ renders: each function returns its value as the format's
# own quoted form, so the program reading the file sees exactly one value, whatever the
# value holds; what a format cannot hold literally is refused with a `throw` naming it.
# Rendering is safe on its own this way, independently of lib/validate.nix.
let
  u = import ./util.nix;
  inherit (builtins)
    genList
    match
    replaceStrings
    stringLength
    substring
    toJSON
    ;

  # A value as it appears in a message: JSON, so a newline or a quote shows as \n or \".
  show = toJSON;
  # The message stays one line even when `what` holds a name that is itself hostile.
  oneLine = replaceStrings [ "\n" "\r" "\t" ] [ "\\n" "\\r" "\\t" ];
  refuse = what: s: why: throw "${oneLine what} ${show s}: ${why}";
  has = re: s: match ".*(${re}).*" s != null;
  hasNewline = s: match "[^\n\r]*" s == null;

  hexDigits = "0123456789ABCDEF";
  hex2 = n: substring (n / 16) 1 hexDigits + substring (u.mod n 16) 1 hexDigits;
  # Every ASCII byte but NUL (which no Nix string holds) and its "%XX" form.
  asciiPercent = builtins.listToAttrs (
    genList (
      i:
      let
        n = i + 1;
      in
      {
        name = builtins.fromJSON "\"\\u00${hex2 n}\"";
        value = "%${hex2 n}";
      }
    ) 127
  );
  chars = s: genList (i: substring i 1 s) (stringLength s);
in
rec {
  inherit show refuse;

  # One Caddyfile token. Caddy's lexer (caddyconfig/caddyfile/lexer.go, the same rules in
  # 2.6 and later) reads "…" with only \" as an escape (any other backslash stays, and one
  # before the closing quote would escape it), and `…` with no escapes at all; `#` and
  # spaces inside either are part of the token. So: "…" when the value has no
  # backslash, `…` when it has no backtick, else refused. Braces are refused whatever the
  # quoting: Caddy replaces {$VAR} with the environment before it lexes (parse.go,
  # replaceEnvVars, over the whole file) and {placeholders} at run time in matchers and
  # upstreams, so a brace could read a secret or change a route. A line break is refused
  # too: Caddy 2.6 miscounts the lines after a quoted one and then rejects the file.
  caddy =
    what: s:
    if has "[{}]" s then
      refuse what s "a Caddyfile cannot hold { or } literally (Caddy expands {$VAR} and {placeholders} even inside quotes)"
    else if has "\n" s then
      refuse what s "a Caddyfile token cannot hold a line break"
    else if !(has "\\\\" s) then
      "\"${replaceStrings [ "\"" ] [ "\\\"" ] s}\""
    else if !(has "`" s) then
      "`${s}`"
    else
      refuse what s "a Caddyfile token cannot hold both a backslash and a backtick literally";

  # A database or user name field of pg_hba.conf, always double-quoted: a quoted name is a
  # literal name, never a keyword (all, sameuser, samerole, replication), a +group or an
  # @file, and may hold spaces, commas and `#`; "" inside quotes is one ". A record is one
  # line, so a line break cannot be held (PostgreSQL 15 docs, "The pg_hba.conf File";
  # /usr/share/postgresql/15/pg_hba.conf.sample).
  pgHbaName =
    what: s:
    if hasNewline s then
      refuse what s "a pg_hba.conf record is one line; a name with a line break cannot be written in it"
    else if s == "" then
      refuse what s "an empty name matches no connection"
    else
      "\"${replaceStrings [ "\"" ] [ "\"\"" ] s}\"";

  # An SQL identifier: double-quoted, each " doubled (PostgreSQL docs, "Identifiers and
  # Key Words"). Anything else, line breaks and backslashes included, is literal inside.
  sqlIdent = s: "\"${replaceStrings [ "\"" ] [ "\"\"" ] s}\"";

  # A value in a libpq key=value connection string: single-quoted, \ and ' escaped with a
  # backslash (PostgreSQL docs, "Connection Strings"; pgx's parseKeywordValueSettings in
  # pgconn/config.go reads the same).
  libpq = s: "'${replaceStrings [ "\\" "'" ] [ "\\\\" "\\'" ] s}'";

  # A URL component (user name, password, path segment): RFC 3986 percent-encoding of
  # everything but the unreserved characters A-Z a-z 0-9 - . _ ~. Only ASCII is encoded;
  # other bytes are refused rather than guessed.
  url =
    what: s:
    builtins.concatStringsSep "" (
      map (
        c:
        if match "[A-Za-z0-9._~-]" c != null then
          c
        else if asciiPercent ? ${c} then
          asciiPercent.${c}
        else
          refuse what s "only ASCII can be percent-encoded here"
      ) (chars s)
    );

  # A value on one line of a systemd EnvironmentFile=, unquoted: systemd drops a backslash
  # and keeps the next character (src/basic/env-file.c, state VALUE_ESCAPE), so each
  # backslash is doubled; a line break would end the assignment and is refused.
  systemdEnv =
    what: s:
    if hasNewline s then
      refuse what s "an environment file value cannot hold a line break"
    else
      replaceStrings [ "\\" ] [ "\\\\" ] s;

  # Checks for formats that have no quoting at all (dnsmasq, wg-quick): the value itself,
  # or a throw naming it.

  # A DNS name: dot-separated labels of letters, digits and inner hyphens (RFC 1123), at
  # most 253 characters.
  dnsName =
    what: s:
    let
      label = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    in
    if builtins.isString s && stringLength s <= 253 && match "${label}(\\.${label})*" s != null then
      s
    else
      refuse what s "not a DNS name (letters, digits, inner hyphens, dot-separated)";

  # A dotted-quad IPv4 address.
  ipv4 = what: s: if u.parseIPv4 s != null then s else refuse what s "not an IPv4 address";

  # An IPv4 network in CIDR notation.
  ipv4Cidr = what: s: if u.parseCIDR s != null then s else refuse what s "not an IPv4 CIDR";

  # A port number.
  port =
    what: p:
    if builtins.isInt p && p >= 1 && p <= 65535 then
      p
    else
      refuse what p "not a port (1-65535)";

  # A CIDR prefix length, 0-32.
  prefixLength =
    what: p:
    if builtins.isInt p && p >= 0 && p <= 32 then
      p
    else
      refuse what p "not a prefix length (0-32)";

  # A WireGuard key: 32 bytes in base64, 44 characters ending in "=".
  wireguardKey =
    what: s:
    if builtins.isString s && match "[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=" s != null then
      s
    else
      refuse what s "not a WireGuard key (44 characters of base64)";

  # A name that may stand in a comment or a file name: letters, digits, - and _.
  plainName =
    what: s:
    if builtins.isString s && match "[A-Za-z0-9_-]+" s != null then
      s
    else
      refuse what s "not a plain name (letters, digits, - and _)";
}
