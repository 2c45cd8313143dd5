# A small stand-in for nixpkgs' `lib`, enough to evaluate Homestack's modules without
# nixpkgs: the mk* helpers produce the same `_type` markers as nixpkgs, so the collector
# can see through mkIf/mkMerge/mkForce/mkDefault. `types` only needs to exist.
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    genList
    head
    isAttrs
    length
    listToAttrs
    map
    stringLength
    substring
    ;
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  anyType = name: {
    _type = "option-type";
    inherit name;
  };
  typeFn = name: _: anyType name;
in
rec {
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${name}.";
  };
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  inherit mkOverride;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  # as nixpkgs' lib: mkBefore and mkAfter are mkOrder 500 and 1500
  mkOrder = priority: content: {
    _type = "order";
    inherit priority content;
  };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  types = {
    attrs = anyType "attrs";
    str = anyType "str";
    path = anyType "path";
    package = anyType "package";
    unspecified = anyType "unspecified";
    bool = anyType "bool";
    int = anyType "int";
    lines = anyType "lines";
    attrsOf = typeFn "attrsOf";
    listOf = typeFn "listOf";
    nullOr = typeFn "nullOr";
    either = a: b: anyType "either";
  };

  attrValues = builtins.attrValues;
  concatMap = f: l: concatLists (map f l);
  concatMapStrings = f: l: concatStringsSep "" (map f l);
  escapeShellArgs = l: concatStringsSep " " (map escapeShellArg l);
  flatten = x: if builtins.isList x then concatLists (map flatten x) else [ x ];
  elem = builtins.elem;
  inherit concatStringsSep filter;
  escapeShellArg = s: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
  filterAttrs =
    pred: set:
    listToAttrs (
      map (n: {
        name = n;
        value = set.${n};
      }) (filter (n: pred n set.${n}) (attrNames set))
    );
  findFirst =
    pred: default: list:
    let
      found = filter pred list;
    in
    if found == [ ] then default else head found;
  genAttrs =
    names: f:
    listToAttrs (
      map (n: {
        name = n;
        value = f n;
      }) names
    );
  getAttrs = names: set: genAttrs (filter (n: set ? ${n}) names) (n: set.${n});
  hasAttrByPath =
    path: set:
    if path == [ ] then
      true
    else
      builtins.isAttrs set
      && set ? ${builtins.head path}
      && hasAttrByPath (builtins.tail path) set.${builtins.head path};
  getExe' = drv: exe: "${drv}/bin/${exe}";
  inherit listToAttrs;
  mapAttrs = builtins.mapAttrs;
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: s: if cond then s else { };
  removePrefix =
    prefix: s:
    let
      n = stringLength prefix;
    in
    if substring 0 n s == prefix then substring n (stringLength s - n) s else s;
  removeSuffix =
    suffix: s:
    let
      n = stringLength suffix;
      m = stringLength s;
    in
    if m >= n && substring (m - n) n s == suffix then substring 0 (m - n) s else s;
  any = builtins.any;
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  range = first: last: genList (i: first + i) (last - first + 1);
  inherit length;
  # only for literal, regex-safe separators ("/", " ")
  splitString = sep: s: filter builtins.isString (builtins.split sep s);
  isDerivation = v: isAttrs v && (v.type or null) == "derivation";
}
