# NixOS VM test of deploy's rollback: a machine switched to a deliberately broken
# configuration goes back to its previous generation, both when the deployer rolls it back
# (a failed health check) and when the deployer is gone (the on-machine watchdog timer).
# The commands are the ones `tools deploy` runs over SSH (homestack/deploy/steps.py).
{ pkgs, ... }:
pkgs.testers.runNixOSTest {
  name = "homestack-rollback";

  nodes.machine =
    { pkgs, ... }:
    {
      # The broken configuration: the same system plus a unit that fails when it starts,
      # so `systemctl is-system-running` reports "degraded".
      specialisation.broken.configuration = {
        systemd.services.homestack-broken = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = "${pkgs.coreutils}/bin/false";
          };
        };
      };
    };

  testScript = ''
    profile = "/nix/var/nix/profiles/system"
    switch = f"{profile}/bin/switch-to-configuration switch"

    machine.wait_for_unit("multi-user.target")
    good = machine.succeed("readlink -f /run/current-system").strip()
    broken = machine.succeed("readlink -f /run/current-system/specialisation/broken").strip()
    # A test VM boots its toplevel directly: give it the generation a deployed host has.
    machine.succeed(f"nix-env -p {profile} --set {good}")


    def deploy_broken(unit, watchdog_seconds):
        """deploy's steps up to the health check; returns the previous generation."""
        link = machine.succeed(f"readlink {profile}").strip()
        previous = link.removeprefix("system-").removesuffix("-link")
        restore = f"nix-env -p {profile} --switch-generation {previous} && {switch}"
        machine.succeed(
            f"systemd-run --unit={unit} "
            f"--on-active={watchdog_seconds} --timer-property=AccuracySec=1s "
            f"/bin/sh -c '{restore}'"
        )
        machine.succeed(f"nix-env -p {profile} --set {broken}")
        machine.execute(switch)  # exits 4: a unit failed
        assert machine.succeed("readlink -f /run/current-system").strip() == broken
        return previous


    with subtest("a failed health check is rolled back to the previous generation"):
        previous = deploy_broken("homestack-rollback-machine-1", 600)
        status, state = machine.execute("timeout 120 systemctl is-system-running --wait")
        assert status != 0 and state.strip() == "degraded", state
        machine.succeed(f"nix-env -p {profile} --switch-generation {previous}")
        machine.succeed(switch)
        machine.succeed("systemctl stop homestack-rollback-machine-1.timer")
        assert machine.succeed("readlink -f /run/current-system").strip() == good
        assert machine.succeed(f"readlink {profile}").strip() == f"system-{previous}-link"
        machine.succeed("timeout 120 systemctl is-system-running --wait")

    with subtest("a machine the deployer lost rolls itself back"):
        previous = deploy_broken("homestack-rollback-machine-2", 15)
        # nobody disarms the watchdog: the machine restores its previous generation alone
        machine.wait_until_succeeds(
            f"test $(readlink -f /run/current-system) = {good}", timeout=180
        )
        assert machine.succeed(f"readlink {profile}").strip() == f"system-{previous}-link"
        machine.wait_until_succeeds("systemctl is-system-running | grep -qx running", timeout=120)
  '';
}
