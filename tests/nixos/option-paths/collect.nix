# Collects every NixOS option path that Homestack's own modules set, for every machine of
# the plan, and classifies each against the option manifest (and the project's extra
# options): "ok", "unknown" (no such option), "variant" (declared only in one of two
# layouts of a nixpkgs module), or "renamed" (a renamed/removed option). Needs no nixpkgs:
# `lib`, `pkgs` and the parts of `config` the modules read are stand-ins (./lib.nix,
# ./stand-ins.nix). mkIf conditions are not evaluated: both branches count.
#
#   nix-instantiate --eval --strict --json collect.nix \
#     --arg root ./. --arg manifest <nixos-options.json> --arg extras <extra-options.json> \
#     [--arg inventory <inventory.toml>] [--arg plant <module.nix>]
# Without `inventory`, the machines are those of the repository's own inventory.toml.
{
  root,
  manifest,
  extras,
  inventory ? null,
  plant ? null,
}:
let
  lib = import ./lib.nix;
  inherit (builtins)
    attrNames
    concatLists
    filter
    foldl'
    head
    isAttrs
    isFunction
    isList
    isPath
    isString
    length
    map
    match
    pathExists
    tail
    tryEval
    ;

  homestackLib = import (root + "/lib");
  plan = if inventory == null then homestackLib.plan else homestackLib.mkPlan inventory;
  standIns = import ./stand-ins.nix { inherit lib plan; };

  # -- the option tree: manifest + extras + options declared by our own modules ---------
  readJSON = f: builtins.fromJSON (builtins.readFile f);
  manifestData = readJSON manifest;
  renamed = manifestData._renamed or { };
  optionEntries =
    filter (e: builtins.substring 0 1 e.name != "_" && match ".*\".*" e.name == null) (
      map (n: {
        name = n;
        value = manifestData.${n};
      }) (attrNames manifestData)
    )
    ++ map (e: {
      inherit (e) name;
      value = e.value // {
        extra = true;
      };
    }) (
      let
        d0 = readJSON extras;
        # `_notForNixosShape` holds entries kept apart for nixos-shape's sake; they count here.
        d = d0 // (d0._notForNixosShape or { });
      in
      map (n: {
        name = n;
        value = d.${n};
      }) (filter (n: builtins.substring 0 1 n != "_") (attrNames d))
    );
  split = p: filter isString (builtins.split "\\." p);
  insert =
    tree: path: info:
    if path == [ ] then
      tree // { opt = info; }
    else
      let
        h = head path;
        kids = tree.c or { };
      in
      tree
      // {
        c = kids // {
          ${h} = insert (kids.${h} or { }) (tail path) info;
        };
      };
  baseTree = foldl' (t: e: insert t (split e.name) e.value) { } optionEntries;

  # -- modules --------------------------------------------------------------------------
  args = m: {
    inherit lib pkgs;
    config = standIns.configFor m;
    modulesPath = "/nonexistent-modulesPath";
    options = { };
  };
  pkgs = standIns.pkgs;

  # a module and everything it imports, as { file; value; } (foreign modules dropped)
  load =
    machine: file: m:
    if isString m && lib.removePrefix "foreign:" m != m then
      [ ]
    else if (isPath m || isString m) && !(pathExists m) then
      [ ]
    else if isPath m || isString m then
      load machine (toString m) (import m)
    else if isFunction m then
      load machine file (m (args machine))
    else
      [
        {
          inherit file;
          value = m;
        }
      ]
      ++ concatLists (
        map (i: load machine (if isPath i || isString i then toString i else "${file} (import)") i) (
          m.imports or [ ]
        )
      );

  configOf =
    v:
    if v ? config || v ? options then
      v.config or { }
    else
      removeAttrs v [
        "imports"
        "_file"
        "meta"
        "disabledModules"
      ];

  # option paths declared by our own modules (homestack.*)
  declared =
    path: v:
    if isAttrs v && (v._type or null) == "option" then
      [ path ]
    else if isAttrs v then
      concatLists (map (n: declared (path ++ [ n ]) v.${n}) (attrNames v))
    else
      [ ];

  # -- walking definitions against the tree ---------------------------------------------
  unwrap =
    v:
    if isAttrs v && v ? _type then
      if builtins.elem v._type [
        "if"
        "override"
        "order"
      ] then
        unwrap v.content
      else if v._type == "merge" then
        concatLists (map unwrap v.contents)
      else
        [ v ]
    else
      [ v ];
  result = status: path: file: { inherit status path file; };
  # a renamed or removed option: its manifest entry may use <name> for any segment
  renamedPatterns = map split (attrNames renamed);
  matches =
    pattern: path:
    length pattern == length path
    && builtins.all (i: let s = builtins.elemAt pattern i; in s == "<name>" || s == "*" || s == builtins.elemAt path i) (lib.range 0 (length path - 1));
  isRenamed = p: builtins.any (pattern: matches pattern p) renamedPatterns;
  hasKids = node: (node.c or { }) != { };
  isLeaf = node: node ? opt && ((node.opt.freeform or false) || !(hasKids node));
  walk =
    tree: file: node: path: v:
    let
      forced = tryEval (unwrap v);
    in
    # a leaf option's value is not forced: only the names on the way to it matter
    if isLeaf node then
      walk1 tree file node path null
    else if !forced.success then
      [ (result "ok" path file) ] # a value that throws here (needs real NixOS) is a leaf
    else
      concatLists (map (walk1 tree file node path) forced.value);
  walk1 =
    tree: file: node: path: v:
    let
      info = node.opt or null;
      kids = node.c or { };
      status =
        if info == null then
          "ok"
        else if info ? variant then
          "variant"
        else
          "ok";
    in
    if info != null && ((info.freeform or false) || !(hasKids node)) then
      [ (result status path file) ]
    # an empty submodule value (`sops.secrets."x" = { };`) sets the option itself
    else if isAttrs v && !(lib.isDerivation v) && v == { } && path != [ ] then
      [ (result status path file) ]
    else if isAttrs v && !(lib.isDerivation v) && hasKids node then
      concatLists (
        map (
          k:
          let
            child = kids.${k} or kids."<name>" or null;
            p = path ++ [ k ];
          in
          if child == null then
            [ (result (if isRenamed p then "renamed" else "unknown") p file) ]
          else
            walk tree file child p v.${k}
        ) (attrNames v)
      )
    else if isList v && kids ? "*" then
      concatLists (map (walk tree file kids."*" (path ++ [ "*" ])) v)
    else if info != null then
      [ (result status path file) ]
    else
      [ (result "unknown" path file) ];

  # -- every machine, with the modules machines.nix gives it ----------------------------
  machines =
    (import (root + "/modules/machines.nix") {
      lib = lib // {
        nixosSystem = a: a.modules;
      };
      inherit plan root;
      homestackModules = import (root + "/modules");
      inputs = standIns.inputs;
      configurations = { };
    }).nixosConfigurations;

  check = machine: checkModules machine machine (machines.${machine} ++ lib.optional (plant != null) plant);

  # the modules of one system: `label` names it in the results, `machine` picks the stand-in
  checkModules =
    label: machine: modules:
    let
      loaded = concatLists (map (load machine "machines.nix") modules);
      own = concatLists (map (l: declared [ ] (l.value.options or { })) loaded);
      tree = foldl' (t: p: insert t p { project = true; }) baseTree own;
    in
    map (r: r // { machine = label; }) (
      concatLists (map (l: walk tree l.file tree [ ] (configOf l.value)) loaded)
    );

  # the nodes of the NixOS VM tests (tests/nixos), each checked like a machine
  vmTests = import (root + "/tests/nixos") {
    pkgs = standIns.pkgs // {
      inherit lib;
      testers.runNixOSTest = test: test;
    };
    inherit plan;
    homestackModules = import (root + "/modules");
    sops-nix = standIns.inputs.sops-nix;
    microvm = standIns.inputs.microvm;
    configurations = { };
    self = root;
  };
  testNodes = concatLists (
    map (
      t:
      concatLists (
        map (n: checkModules "${t}/${n}" n [ vmTests.${t}.nodes.${n} ]) (attrNames vmTests.${t}.nodes)
      )
    ) (attrNames vmTests)
  );
  # like unwrap, but drops mkIf contents whose condition is false with the stand-in values
  unwrapActive =
    v:
    if isAttrs v && (v._type or null) == "if" then
      let
        c = tryEval v.condition;
      in
      if c.success && c.value == false then [ ] else unwrapActive v.content
    else if isAttrs v && builtins.elem (v._type or null) [ "override" "order" ] then
      unwrapActive v.content
    else if isAttrs v && (v._type or null) == "merge" then
      concatLists (map unwrapActive v.contents)
    else
      [ v ];

  # the sops secrets each machine's own modules declare (with the example's settings):
  # name, and key/sopsFile if set
  secretsOf =
    machine:
    let
      loaded = concatLists (map (load machine "machines.nix") machines.${machine});
      declaredIn =
        l:
        let
          c = tryEval (unwrapActive (configOf l.value));
          sops = concatLists (map (x: unwrapActive (x.sops or { })) (if c.success then c.value else [ ]));
          secrets = concatLists (map (x: unwrapActive (x.secrets or { })) sops);
        in
        concatLists (
          map (
            set:
            map (
              n:
              let
                attrs = concatLists (map (x: if isAttrs x then [ x ] else [ ]) (unwrapActive set.${n}));
                field = f: lib.findFirst (x: x != null) null (map (a: a.${f} or null) attrs);
              in
              {
                inherit machine;
                name = n;
                key = field "key";
                sopsFile = let f = field "sopsFile"; in if f == null then null else toString f;
              }
            ) (attrNames set)
          ) (builtins.filter isAttrs secrets)
        );
    in
    concatLists (map declaredIn loaded);
in
{
  paths = concatLists (map check (attrNames machines)) ++ testNodes;
  secrets = concatLists (map secretsOf (attrNames machines));
  root = toString standIns.root;
}
