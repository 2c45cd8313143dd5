# Homestack's plan library: builtins only, no flake inputs, so it evaluates anywhere
# (`nix eval --offline .#lib.plan`). mkPlan validates an inventory and returns the plan
# with every rendered artifact; see docs/plan.md.
let
  u = import ./util.nix;
  validate = import ./validate.nix;
  mkBasePlan = import ./plan.nix;
  services = import ./services.nix;
  secrets = import ./secrets.nix;
  contracts = import ./contracts.nix;
  render = {
    caddy = import ./render/caddy.nix;
    dnsmasq = import ./render/dnsmasq.nix;
    postgresql = import ./render/postgresql.nix;
    nftables = import ./render/nftables.nix;
    wireguard = import ./render/wireguard.nix;
  };
  inherit (builtins) attrNames filter elem head;

  withArtifacts =
    base:
    let
      guestNames = attrNames base.guests;
      running = s: filter (g: elem s base.guests.${g}.services) guestNames;
      pgServer = let s = running "postgresql"; in if s == [ ] then null else head s;
      dnsGuests = running "dnsmasq";
      hostsWith = role: filter (h: base.hosts.${h}.role == role) (attrNames base.hosts);
      forRender = base // { dnsGuestNames = dnsGuests; };
    in
    base
    // {
      artifacts = {
        caddyfile = render.caddy base;
        dnsmasq = if dnsGuests == [ ] then null else render.dnsmasq forRender;
        pgHba = if pgServer == null then null else render.postgresql.hba base pgServer;
        postgresqlInit = if pgServer == null then null else render.postgresql.init base pgServer;
        nftables = render.nftables.guests base;
        bridgeNftables =
          let h = hostsWith "hypervisor"; in if h == [ ] then null else render.nftables.bridge base (head h);
        bridgeNftablesByHost = builtins.listToAttrs (
          map (h: { name = h; value = render.nftables.bridge base h; }) (hostsWith "hypervisor")
        );
        hostNftables = builtins.listToAttrs (
          map (h: { name = h; value = render.nftables.hypervisorNat base h; }) (hostsWith "hypervisor")
          ++ u.optional (base.relay != null) { name = base.relay.host; value = render.nftables.relay base; }
        );
        wireguard = render.wireguard base;
      };
    };

  # The inventory's errors, each "<key>: <problem>"; [] when it is valid. The services'
  # run-time contract (lib/contracts.nix) is checked once the inventory itself is valid.
  errorsOf =
    inv:
    let
      errors = validate inv;
    in
    if errors != [ ] then errors else contracts.errors (mkBasePlan inv);

  mkPlanFrom =
    file: inv:
    let
      errors = errorsOf inv;
    in
    if errors != [ ] then throw "${file}: ${head errors}" else withArtifacts (mkBasePlan inv);

  readInventory = path: builtins.fromTOML (builtins.readFile path);
in
{
  inherit services errorsOf;
  inherit (secrets) secretKeys;

  # mkPlan ./inventory.toml -> the plan (throws one message naming the key at fault).
  mkPlan = path: mkPlanFrom (baseNameOf (toString path)) (readInventory path);

  # The same from an already parsed inventory attribute set.
  mkPlanFromAttrs = inv: mkPlanFrom "inventory" inv;

  # The plan of this repository's example inventory.
  plan = mkPlanFrom "inventory.toml" (readInventory ../inventory.toml);
}
