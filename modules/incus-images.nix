# The flake's Incus images (not a NixOS module): each guest on an engine = "incus" host,
# built from its own nixosConfiguration with nixpkgs' image modules, as one directory that
# `tools tofu export`'s incus_image resources read (var.image_dir/<guest>/):
#   container: metadata.tar.xz + rootfs.tar.xz (nixos/modules/virtualisation/lxc-container.nix
#              system.build.tarball, lxc-image-metadata.nix system.build.metadata)
#   vm:        metadata.tar.xz + disk.qcow2 (incus-virtual-machine.nix system.build.qemuImage)
#   nix build .#incusImages.<guest> -o images/<guest>
{
  lib,
  pkgs,
  nixpkgs,
  plan,
  configurations,
}:
let
  modulesOf = kind: [
    "${nixpkgs}/nixos/modules/virtualisation/lxc-image-metadata.nix"
    (
      if kind == "vm" then
        "${nixpkgs}/nixos/modules/virtualisation/incus-virtual-machine.nix"
      else
        "${nixpkgs}/nixos/modules/virtualisation/lxc-container.nix"
    )
  ];
  image =
    name: g:
    let
      build = (configurations.${name}.extendModules { modules = modulesOf g.kind; }).config.system.build;
      data =
        if g.kind == "vm" then
          "ln -s ${build.qemuImage}/nixos.qcow2 $out/disk.qcow2"
        else
          "ln -s ${build.tarball}/tarball/*.tar.xz $out/rootfs.tar.xz";
    in
    pkgs.runCommand "incus-image-${name}" { } ''
      mkdir -p $out
      ln -s ${build.metadata}/tarball/*.tar.xz $out/metadata.tar.xz
      ${data}
    '';
  onIncus = lib.filterAttrs (_: g: g.kind != null) plan.guests;
in
lib.mapAttrs image onIncus
