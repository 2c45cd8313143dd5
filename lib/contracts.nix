# The run-time contract of the services the inventory places on each guest, checked on the
# plan (lib/plan.nix) before anything is built: no two processes of a guest bind one port
# (the catalogue's built-in defaults included), every service's run-time need has a
# provider and the allow matrix opens the flow to it, and every route reaches a port a
# service of its guest serves. Each error is "KEY: message", naming the guest and both
# parties.
let
  u = import ./util.nix;
  inherit (builtins)
    attrNames
    concatLists
    elem
    filter
    groupBy
    head
    length
    ;
  inherit (u) concatMap optional;

  showPort = p: "${toString p.port}/${p.proto}";
  owner = p: if p.service == "extra" then "guests.<g>.ports" else "${p.service} (${p.name})";
in
{
  # errors plan -> [ "guests.<g>.<key>: …" ]; [] when the contract holds.
  errors =
    plan:
    let
      guestNames = attrNames plan.guests;
      allowed =
        from: to: port: proto:
        builtins.any (
          f: f.from == from && f.to == to && f.port == port && f.proto == proto
        ) plan.allow;

      clashes =
        g:
        let
          byPort = groupBy showPort plan.guests.${g}.listening;
        in
        concatMap (
          k:
          let
            ps = byPort.${k};
            a = head ps;
            b = builtins.elemAt ps 1;
          in
          optional (length ps > 1)
            "guests.${g}.services: port ${k} is bound by both ${
              builtins.replaceStrings [ "<g>" ] [ g ] (owner a)
            } and ${builtins.replaceStrings [ "<g>" ] [ g ] (owner b)} on ${g}"
        ) (attrNames byPort);

      needErrors =
        g:
        concatMap (
          n:
          let
            what = "${n.service} on ${g} needs ${n.need}${if n.why == "" then "" else " (${n.why})"}";
            target = "${toString n.port}/${n.proto}";
          in
          if n.providers == [ ] then
            [ "guests.${g}.services: ${what}, but no guest of the inventory runs ${n.need}" ]
          else if n.through != null then
            (
              if n.via == [ ] then
                [ "guests.${g}.services: ${what} through ${n.through}, but no guest runs ${n.through}" ]
              else
                concatMap (
                  v:
                  let
                    entry = head (filter (p: p.service == n.through && p.name == "https") plan.guests.${v}.listening ++ [ { port = 443; proto = "tcp"; } ]);
                  in
                  optional (v != g && !(allowed g v entry.port entry.proto))
                    "guests.${v}.allow: ${what} through ${n.through} on ${v}, but the allow matrix does not let ${g} reach ${v}:${toString entry.port}/${entry.proto}"
                  ++ concatMap (
                    p:
                    optional (
                      !(builtins.any (r: r.guest == p && r.port == n.port) plan.routes)
                    ) "guests.${p}.routes: ${what} through ${n.through} on ${v}, but no route of ${p} reaches ${n.need}'s port ${target}"
                  ) n.providers
                ) n.via
            )
          else
            concatMap (
              p:
              optional (p != g && !(allowed g p n.port n.proto))
                "guests.${p}.allow: ${what} on ${p} at ${target}, but the allow matrix does not let ${g} reach ${p}:${target}"
            ) n.providers
        ) plan.guests.${g}.needs;

      routeErrors =
        g:
        concatMap (
          r:
          optional (
            !(builtins.any (p: p.port == r.port && p.proto == "tcp") plan.guests.${g}.listening)
          ) "guests.${g}.routes: route ${r.name} (${r.path}) reaches port ${toString r.port}/tcp on ${g}, which no service of ${g} serves"
        ) plan.guests.${g}.routes;
    in
    concatLists (map (g: clashes g ++ routeErrors g ++ needErrors g) guestNames);
}
