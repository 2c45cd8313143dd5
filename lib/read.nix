# Reading inventory.toml: the text is checked for what builtins.fromTOML would mishandle
# before it is parsed, so every problem is reported with its key instead of a parser error
# without a file or a silently altered value:
# - a byte order mark (fromTOML ignores it; the TOML spec and Python's tomllib do not);
# - the escapes \u0000 and \U00000000: Nix strings end at a NUL, so the value would be cut;
# - dates and times, which fromTOML refuses with an error that names neither file nor key.
let
  inherit (builtins)
    elemAt
    filter
    foldl'
    genList
    isString
    length
    match
    split
    stringLength
    substring
    ;

  nulEscape = "\\\\u0000|\\\\U00000000";
  dateTime = "[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}:[0-9]{2}:[0-9]{2}";

  # U+FEFF as UTF-8 (Nix strings have no \u escape; JSON's has).
  bom = builtins.fromJSON "\"\\ufeff\"";

  found = re: text: length (split re text) > 1;

  # The text's lines (split keeps the separators as lists; drop them).
  linesOf = text: filter isString (split "\n" text);

  # What a line says outside its strings and comment: good enough to see a bare value.
  bare =
    line:
    let
      noStrings = builtins.concatStringsSep "\"\"" (filter isString (split "\"([^\"\\\\]|\\\\[^\n])*\"|'[^'\n]*'" line));
      noComment = builtins.head (filter isString (split "#" noStrings));
    in
    noComment;

  # [table] or [[array]] header names, and "key =" at the start of a line.
  header = line: match "[ \t]*\\[\\[?[ \t]*([^]\n]*[^] \t\n])[ \t]*]]?[ \t]*(#[^\n]*)?" line;
  keyOf = line: match "[ \t]*([A-Za-z0-9_\".' -]*[A-Za-z0-9_\"'])[ \t]*=[^\n]*" line;
  unquote = s: builtins.replaceStrings [ "\"" "'" " " ] [ "" "" "" ] s;

  # Every line that matches `bad`, as "<key>: line N: <message>".
  scan =
    text: bad: message:
    let
      lines = linesOf text;
      step =
        acc: i:
        let
          line = elemAt lines i;
          h = header line;
          k = keyOf line;
          table = if h != null then unquote (elemAt h 0) else acc.table;
          key =
            if k == null then
              (if table == "" then "inventory" else table)
            else
              (if table == "" then "" else "${table}.") + unquote (elemAt k 0);
        in
        {
          inherit table;
          errors = acc.errors ++ (if bad line then [ "${key}: line ${toString (i + 1)}: ${message}" ] else [ ]);
        };
    in
    (foldl' step {
      table = "";
      errors = [ ];
    } (genList (i: i) (length lines))).errors;
in
path:
let
  text = builtins.readFile path;
  errors =
    (if substring 0 3 text == bom then
      [ "inventory: starts with a UTF-8 byte order mark; save the file without one" ]
    else
      [ ])
    ++ (
      if found nulEscape text then
        scan text (found nulEscape) "contains \\u0000 (a NUL character), which a Nix string cannot hold; remove it"
      else
        [ ]
    )
    ++ (
      if found dateTime text then
        scan text (l: found "(^|[=,[{ \t])(${dateTime})" (bare l)) "TOML dates and times are not accepted here; write a number or a quoted string"
      else
        [ ]
    );
in
{
  inherit errors;
  # Parsed only when the text is clean: fromTOML's own errors (syntax) cannot be caught.
  inventory = if errors == [ ] then builtins.fromTOML text else null;
}
