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
    traefik = import ./render/traefik.nix;
    headscale = import ./render/headscale.nix;
    incus = import ./render/incus.nix;
  };
  alternatives = import ./alternatives.nix;
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
      # Which ingress the proxy guest runs (lib/alternatives.nix).
      ingress =
        if base.proxy == null then null else head (filter (s: elem s alternatives.ingressServices) base.guests.${base.proxy}.services);
      traefik =
        let
          t = render.traefik.render base;
          problems = render.traefik.problems t;
        in
        if problems == [ ] then t else throw (builtins.concatStringsSep "\n" problems);
    in
    base
    // {
      inherit ingress;
      artifacts = {
        caddyfile = if ingress == "caddy" then render.caddy base else "";
        # Traefik's static and dynamic configuration (JSON, which Traefik reads as YAML).
        traefik = if ingress == "traefik" then traefik else null;
        # Headscale's settings and its ACL policy file (HuJSON).
        headscale =
          if base.mesh != null && base.mesh.server == "headscale" then
            {
              config = render.headscale.config base { };
              policy = render.headscale.policyFile base;
            }
          else
            null;
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
        # Per hypervisor with engine = "incus": its preseed and resource models.
        incus = builtins.listToAttrs (
          map (h: { name = h; value = render.incus.forHost base h; }) (
            filter (h: base.hosts.${h}.engine == "incus") (hostsWith "hypervisor")
          )
        );
      };
    };

  # A read inventory (read.nix) judged once: problems of the text, then of the inventory
  # (validate.nix), then, on a valid inventory, of the services' run-time contract
  # (contracts.nix); and the base plan, computed once for the contract and the plan.
  judge =
    read:
    let
      early = if read.errors != [ ] then read.errors else validate read.inventory;
      base = mkBasePlan read.inventory;
    in
    {
      errors = if early != [ ] then early else contracts.errors base;
      inherit base;
    };

  # The inventory's problems, each "<key>: <problem>"; [] when it is valid.
  errorsOf = inv: (judge { errors = [ ]; inventory = inv; }).errors;

  # Every problem on its own line, each "FILE: KEY: message", as `tools inventory check`
  # prints them.
  report = file: errors: builtins.concatStringsSep "\n" (map (e: "${file}: ${e}") errors);

  mkPlanFrom =
    file: read:
    let
      judged = judge read;
    in
    if judged.errors != [ ] then throw (report file judged.errors) else withArtifacts judged.base;

  readInventory = import ./read.nix;

  # What `tools` evaluates (lib/eval.nix): the problems, and the plan when there are none.
  inspect =
    path: withPlan:
    let
      read = readInventory path;
      judged = judge read;
      inherit (judged) errors;
      inv = read.inventory;
    in
    {
      file = baseNameOf (toString path);
      inherit errors;
      counts =
        if errors == [ ] then
          {
            hosts = builtins.length (attrNames inv.hosts);
            guests = builtins.length (attrNames inv.guests);
            users = builtins.length (attrNames inv.users);
          }
        else
          null;
      plan = if errors == [ ] && withPlan then withArtifacts judged.base else null;
    };
in
{
  inherit services errorsOf inspect alternatives;
  # The check of a Traefik configuration ({ static, dynamic }) that Traefik lacks.
  traefikProblems = render.traefik.problems;
  schema = import ./schema.nix;
  # The inventory's JSON Schema, derived from schema.nix (inventory.schema.json).
  jsonSchema = import ./jsonschema.nix;
  # The problems of the shape alone, for comparing with what the JSON Schema rejects.
  shapeErrorsOf = validate.shape;
  inherit (secrets) secretKeys;

  # mkPlan ./inventory.toml -> the plan; throws every problem, one "FILE: KEY: message" a line.
  mkPlan = path: mkPlanFrom (baseNameOf (toString path)) (readInventory path);

  # The same from an already parsed inventory attribute set.
  mkPlanFromAttrs = inv: mkPlanFrom "inventory" { errors = [ ]; inventory = inv; };

  # The plan of this repository's example inventory.
  plan = mkPlanFrom "inventory.toml" (readInventory ../inventory.toml);
}
