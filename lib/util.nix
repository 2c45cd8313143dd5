# Small helpers over builtins: lists, strings, integers and IPv4 arithmetic.
# lib/ has no inputs, so what nixpkgs.lib would give us is written out here.
let
  inherit (builtins)
    elemAt
    foldl'
    genList
    length
    match
    ;

  pow2Table = genList (i: foldl' (acc: _: acc * 2) 1 (genList (x: x) i)) 33;
in
rec {
  # The remainder of a / b for non-negative integers.
  mod = a: b: a - (a / b) * b;

  concatMap = f: list: builtins.concatLists (map f list);
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  unique = list: builtins.attrNames (builtins.listToAttrs (map (x: { name = x; value = null; }) list));
  # Keeps the first of each string, in order (see firstOfEach).
  uniqueOrdered = list: map (x: x.key) (builtins.genericClosure { startSet = map (key: { inherit key; }) list; operator = _: [ ]; });
  # The first element of each key (key x: a string), in order. genericClosure keeps the
  # first item of each `key` it meets and compares keys as strings: no attribute set of
  # keys is built, so no key becomes one of the evaluator's interned names.
  firstOfEach =
    key: list:
    map (x: x.v) (
      builtins.genericClosure {
        startSet = map (v: { key = key v; inherit v; }) list;
        operator = _: [ ];
      }
    );
  # A set for fast membership tests: toSet [ "a" ] ? a.
  toSet = list: builtins.listToAttrs (map (x: { name = x; value = true; }) list);
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (builtins.attrNames attrs);
  filterAttrs = pred: attrs: builtins.removeAttrs attrs (builtins.filter (n: !(pred n attrs.${n})) (builtins.attrNames attrs));
  imap0 = f: list: genList (i: f i (elemAt list i)) (length list);
  hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
  isInt = builtins.isInt;
  showList = list: builtins.concatStringsSep ", " list;
  lines = list: builtins.concatStringsSep "\n" list + "\n";

  # Names that occur more than once, in first-seen order.
  duplicates =
    list:
    let
      counts = builtins.groupBy (x: x) list;
    in
    # Most lists have none: seen without grouping (and interning) every element.
    if length (uniqueOrdered list) == length list then [ ] else uniqueOrdered (builtins.filter (x: length counts.${x} > 1) list);

  # 2^n for 0 <= n <= 32.
  pow2 = n: elemAt pow2Table n;

  # "192.168.1.7" -> 3232235783, or null when it is not a dotted-quad IPv4 address.
  parseIPv4 =
    s:
    let
      octet = "(0|[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])";
      m = if builtins.isString s then match "${octet}\\.${octet}\\.${octet}\\.${octet}" s else null;
    in
    if m == null then
      null
    else
      foldl' (acc: o: acc * 256 + builtins.fromJSON o) 0 m;

  formatIPv4 =
    n:
    let
      o = i: toString (mod (n / (pow2 (8 * (3 - i)))) 256);
    in
    "${o 0}.${o 1}.${o 2}.${o 3}";

  # "192.168.100.0/24" -> { address = int; prefix = 24; network = int; size = 256; } or null.
  parseCIDR =
    s:
    let
      m = if builtins.isString s then match "([0-9.]+)/(0|[1-9]|[12][0-9]|3[0-2])" s else null;
      ip = if m == null then null else parseIPv4 (elemAt m 0);
      prefix = builtins.fromJSON (elemAt m 1);
      size = pow2 (32 - prefix);
    in
    if ip == null then
      null
    else
      {
        address = ip;
        inherit prefix size;
        network = ip - mod ip size;
      };

  inCIDR = cidr: ip: ip >= cidr.network && ip < cidr.network + cidr.size;

  netmask = prefix: formatIPv4 (pow2 32 - pow2 (32 - prefix));

  # A stable, locally administered unicast MAC derived from a name: 02:xx:xx:xx:xx:xx.
  macFor =
    name:
    let
      h = builtins.hashString "sha256" "homestack-mac:${name}";
      byte = i: builtins.substring (2 * i) 2 h;
    in
    "02:${byte 0}:${byte 1}:${byte 2}:${byte 3}:${byte 4}";
}
