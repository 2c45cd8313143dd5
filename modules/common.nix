# What every Homestack machine shares: the inventory's admins, SSH with keys only, the
# plan's default-deny nftables rule sets as the whole firewall, automatic garbage
# collection, and trust in the private CA.
{ config, lib, ... }:
let
  inherit (config.homestack) plan root;
  admins = map (n: plan.users.${n}) plan.admins;
  adminKeys = lib.concatMap (u: u.sshKeys) admins;
  caFile = root + "/certs/ca.crt";
in
{
  imports = [ ./nftables.nix ];

  config = {
    services.openssh = {
      enable = true;
      # Who may reach sshd is the plan's `input` (the hypervisor: the LAN and the mesh, never
      # a guest or the tunnel); NixOS's default would open port 22 on every interface.
      openFirewall = false;
      # Only the ed25519 host key: its age recipient is what sops-nix decrypts with, and an
      # RSA key would make sops-nix import it as a GnuPG key as well.
      hostKeys = lib.mkDefault [
        {
          type = "ed25519";
          path = "/etc/ssh/ssh_host_ed25519_key";
        }
      ];
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        # `tools deploy` logs in as root with an admin's key; never with a password.
        PermitRootLogin = "prohibit-password";
      };
    };

    users.users =
      lib.genAttrs plan.admins (n: {
        isNormalUser = true;
        openssh.authorizedKeys.keys = plan.users.${n}.sshKeys;
      })
      // {
        root.openssh.authorizedKeys.keys = adminKeys;
      };
    # Admins have keys, not passwords: they administer as root@ over SSH (as `tools deploy`
    # does); their own accounts are for logging in and looking around.

    # nftables everywhere: the plan's rule sets are nftables, and mixing iptables and
    # nftables rules on one machine makes the effective policy hard to read.
    networking.nftables.enable = true;
    # The plan's rule sets are each machine's whole firewall, input included (lib/render/
    # nftables.nix, default drop). NixOS's own would add a second input chain that every
    # packet must also pass, opened by each module's openFirewall rather than by the plan.
    networking.firewall.enable = false;
    # Its table, loaded by earlier versions, goes on the next switch rather than at reboot.
    networking.nftables.extraDeletions = ''
      table inet nixos-fw
      delete table inet nixos-fw
    '';

    nix.gc = {
      # Off on MicroVM guests (guest.nix): their store is the host's, shared read-only.
      automatic = lib.mkDefault true;
      dates = "weekly";
      options = "--delete-older-than 30d";
    };

    # private-ca mode: every machine trusts the Homestack root CA (`tools ca init` writes
    # certs/ca.crt). Until it exists the machines simply do not trust it yet.
    security.pki.certificateFiles = lib.optional (
      plan.certificates.mode == "private-ca" && builtins.pathExists caFile
    ) caFile;

    system.stateVersion = lib.mkDefault "25.11";
  };
}
