# The inventory's JSON Schema (draft 2020-12), derived from schema.nix: the declarations the
# validator checks, so the two cannot disagree. Editors (taplo, even-better-toml) use it to
# complete and check keys; the rules between keys stay in validate.nix, as its description says.
let
  schema = import ./schema.nix;
  inherit (builtins) attrNames filter listToAttrs mapAttrs;

  convert =
    t:
    let
      doc = if t ? doc then { description = t.doc; } else { };
      body =
        if t.type == "string" then
          {
            type = "string";
            pattern = "^(${t.pattern})$";
          }
        else if t.type == "int" then
          {
            type = "integer";
            minimum = t.min;
            maximum = t.max;
          }
        else if t.type == "bool" then
          { type = "boolean"; }
        else if t.type == "enum" then
          { enum = t.values; }
        else if t.type == "list" then
          {
            type = "array";
            maxItems = t.maxItems;
            items = convert t.item;
          }
        else if t.type == "table" then
          {
            type = "object";
            properties = mapAttrs (_: convert) t.keys;
            required = filter (k: t.keys.${k}.required) (attrNames t.keys);
            additionalProperties = false;
          }
        else if t.type == "named" then
          {
            type = "object";
            propertyNames.pattern = "^(${t.pattern})$";
            additionalProperties = convert t.value;
          }
        else
          throw "jsonschema.nix: unknown type ${t.type}";
    in
    doc // body;
in
{
  "$schema" = "https://json-schema.org/draft/2020-12/schema";
  "$id" = "https://homestack.invalid/inventory.schema.json";
  title = "Homestack inventory";
  description = "The shape of inventory.toml: keys, types, bounds and whitelists, generated from lib/schema.nix. The rules between keys (addresses inside their networks, names that refer to something, reserved words, the topology the plan supports) are checked by lib/validate.nix: run `tools inventory check`.";
}
// convert schema.inventory
