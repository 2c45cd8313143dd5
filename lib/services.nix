# The service catalogue: one file per service under ./services/, named as the inventory's
# `services` name them. Each entry holds what the rest is derived from (see
# docs/services.md): the NixOS module under modules/services/, the systemd units that run
# it, every port it binds (built-in defaults included; `scope = "loopback"` for those bound
# to 127.0.0.1 only), its health probes, its secrets (by role: the sops key `name`, its format and generator), its
# persistent directories, and the services it needs at run time.
# Adding a service is one file here plus its module; nothing else lists services.
let
  dir = ./services;
  files = builtins.filter (f: builtins.match "[a-z][a-z0-9-]*\\.nix" f != null) (
    builtins.attrNames (builtins.readDir dir)
  );
  normalise =
    name: s:
    {
      description = s.description or name;
      # "ingress" (the proxy: caddy, traefik), "mesh" (the mesh server: netbird-server,
      # headscale) or null; lib/alternatives.nix picks the stack's choice from it.
      kind = s.kind or null;
      module = s.module or "${name}.nix";
      units = s.units or [ "${name}.service" ];
      ports = map (p: { proto = "tcp"; scope = "any"; } // p) (s.ports or [ ]);
      health = s.health or [ ];
      secrets = s.secrets or { };
      persist = s.persist or [ ];
      needs = map (n: { ifDatabases = false; through = null; why = ""; } // n) (s.needs or [ ]);
    };
in
builtins.listToAttrs (
  map (
    f:
    let
      name = builtins.substring 0 (builtins.stringLength f - 4) f;
    in
    {
      inherit name;
      value = normalise name (import (dir + "/${f}"));
    }
  ) files
)
