# Options every Homestack machine carries: the plan computed by `lib/` from inventory.toml
# and the name of the machine this system is. Modules read only these and never recompute
# what the plan already holds.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.homestack;
in
{
  options.homestack = {
    plan = mkOption {
      type = types.attrs;
      description = "The plan of the inventory, as returned by Homestack's `lib.mkPlan`.";
    };
    machine = mkOption {
      type = types.str;
      description = "Name of this machine in the plan (a key of `hosts` or `guests`).";
    };
    root = mkOption {
      type = types.path;
      defaultText = lib.literalExpression "the repository root";
      default = ../.;
      description = "Directory that the plan's relative paths (secrets/…, certs/…) start from.";
    };
    persist = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/var/lib/caddy" ];
      description = ''
        Directories that must survive a reboot. On a MicroVM guest (whose `/` is tmpfs) each
        is bind-mounted from the guest's persistent share; the hypervisor creates them.
      '';
    };
    guest = mkOption {
      type = types.nullOr types.attrs;
      readOnly = true;
      default = cfg.plan.guests.${cfg.machine} or null;
      defaultText = lib.literalExpression "config.homestack.plan.guests.\${machine} or null";
      description = "This machine's entry in the plan's `guests`, or null on a host.";
    };
    host = mkOption {
      type = types.nullOr types.attrs;
      readOnly = true;
      default = cfg.plan.hosts.${cfg.machine} or null;
      defaultText = lib.literalExpression "config.homestack.plan.hosts.\${machine} or null";
      description = "This machine's entry in the plan's `hosts`, or null on a guest.";
    };
  };

  config = {
    assertions = [
      {
        assertion = cfg.guest != null || cfg.host != null;
        message = "homestack.machine = \"${cfg.machine}\" is neither a host nor a guest of the inventory; add it under [hosts] or [guests] in inventory.toml";
      }
    ];
    networking.hostName = cfg.machine;
    networking.domain = cfg.plan.domain;
  };
}
