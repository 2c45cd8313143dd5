# NixOS VM test of deploy's activation protocol on a real NixOS machine: a switch to a
# deliberately broken configuration goes back to the previous one when the deployer rolls
# it back (a failed health check), when the deployer is gone (the watchdog, a transient
# unit with systemd's own PATH), and when the machine reboots before the probes passed
# (the boot default never moved). A disarm that comes after the watchdog fired says so.
# The commands are not repeated here: they are homestack/deploy/activation.py's own,
# loaded from the tools source, the very functions `tools deploy` and GitOps run.
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
    import importlib.util
    import shlex

    spec = importlib.util.spec_from_file_location(
        "activation", "${../../tools/homestack/deploy/activation.py}"
    )
    act = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(act)


    def run(argv):
        return machine.succeed(shlex.join(argv)).strip()


    def running():
        return run(act.running())


    machine.wait_for_unit("multi-user.target")
    good = running()
    broken = machine.succeed("readlink -f /run/current-system/specialisation/broken").strip()
    # A test VM boots its toplevel directly: give it the boot default a deployed host has.
    run(act.set_profile(good))


    def deploy_broken(stamp, watchdog_seconds):
        """The engine's steps up to the health check (homestack/deploy/steps.py)."""
        watchdog = act.watchdog_unit("machine", stamp)
        run(act.arm(good, watchdog, watchdog_seconds))
        # exits 4 (a unit failed): the switch itself ran in its own unit, to the end
        machine.execute(shlex.join(act.switch(broken, act.Action.TEST, act.switch_unit("machine", stamp))))
        assert running() == broken
        assert run(act.profile_system()) == good, "the boot default must not move yet"
        return watchdog


    def disarm(watchdog):
        """The engine's race-free disarm: stop the timer, wait out a started rollback, look."""
        machine.execute(shlex.join(act.stop_timer(watchdog)))
        machine.wait_until_succeeds(
            f"! {shlex.join(act.watchdog_state(watchdog))} | grep -Eqx 'activating|active|deactivating'",
            timeout=300,
        )
        return act.judge(running(), broken)


    with subtest("a failed health check is rolled back by the deployer"):
        watchdog = deploy_broken("1", 600)
        status, state = machine.execute("timeout 120 systemctl is-system-running --wait")
        assert status != 0 and state.strip() == "degraded", state
        run(act.switch(good, act.Action.TEST, act.switch_unit("machine", "1-rollback")))
        machine.execute(shlex.join(act.stop_timer(watchdog)))
        assert running() == good
        machine.succeed("systemctl reset-failed")
        machine.succeed("timeout 120 systemctl is-system-running --wait")

    with subtest("a machine the deployer lost rolls itself back (systemd's PATH, absolute paths)"):
        deploy_broken("2", 15)
        # nobody disarms the watchdog: the machine re-activates what ran before, alone
        machine.wait_until_succeeds(f"test $(readlink -f /run/current-system) = {good}", timeout=180)
        assert run(act.profile_system()) == good
        machine.succeed("systemctl reset-failed")
        machine.wait_until_succeeds("systemctl is-system-running | grep -qx running", timeout=120)

    with subtest("a disarm after the watchdog fired reports the rollback, not the switch"):
        watchdog = deploy_broken("3", 2)
        machine.sleep(5)
        assert disarm(watchdog) is act.Disarmed.FIRED
        assert running() == good
        machine.succeed("systemctl reset-failed")

    with subtest("a disarm in time confirms the new system still runs"):
        watchdog = deploy_broken("4", 600)
        assert disarm(watchdog) is act.Disarmed.CONFIRMED
        run(act.switch(good, act.Action.TEST, act.switch_unit("machine", "4-rollback")))
        machine.succeed("systemctl reset-failed")

    with subtest("a reboot before the probes passed comes back on the boot default"):
        deploy_broken("5", 600)
        # the boot default a bootloader would boot is still the previous system, and the
        # transient watchdog is gone with the reboot
        assert run(act.profile_system()) == good
        machine.shutdown()
        machine.start()
        machine.wait_for_unit("multi-user.target")
        assert running() == good
        assert machine.execute("systemctl cat homestack-rollback-machine-5.timer")[0] != 0
  '';
}
