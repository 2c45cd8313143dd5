# The VM tests of ./default.nix that boot MicroVMs inside the test VM and so need nested
# virtualisation. flake.nix keeps them out of `checks` (an ordinary KVM builder runs
# `nix flake check`) and offers them as legacyPackages.<system>.nestedChecks, which
# `tools test NAME` runs when asked.
[ "hypervisor" ]
