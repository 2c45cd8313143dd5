# The plan's rendered nftables text (its artifacts) as this machine's rule set, replacing
# only the tables that text declares. With `networking.nftables.ruleset` set, NixOS defaults
# to `flush ruleset` on every start and reload, which would also drop the tables programs add
# at run time (the NetBird client's `netbird` table, for one) until they restart. So flushing
# is off, and each table the text declares is deleted and re-created instead, as NixOS does
# for `networking.nftables.tables` (its own firewall tables are handled that way already).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  rulesets = config.homestack.nftables.rulesets;
  text = lib.concatStringsSep "\n" rulesets;
  lines = lib.splitString "\n" text;
  # [ family name ] of each top-level `table <family> <name> {` line.
  tables = lib.filter (t: t != null) (map (builtins.match "table ([a-z0-9]+) ([^ {]+) *[{] *") lines);
  deletion =
    t:
    let
      table = lib.concatStringsSep " " t;
    in
    # Declaring the table first makes the deletion a no-op when it does not exist yet.
    "table ${table}\ndelete table ${table}\n";
in
{
  options.homestack.nftables.rulesets = mkOption {
    type = types.listOf types.str;
    default = [ ];
    description = ''
      Rendered nftables rule sets (artifacts of the plan, used as they are) that make up this
      machine's own tables. NixOS's firewall, when enabled, keeps its own tables beside them.
    '';
  };

  config = lib.mkIf (rulesets != [ ]) {
    networking.nftables = {
      enable = true;
      ruleset = text;
      flushRuleset = false;
      extraDeletions = lib.concatMapStrings deletion tables;
    };
  };
}
