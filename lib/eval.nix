# Entry point for tools, one evaluation per command:
#   nix-instantiate --eval --strict --json lib/eval.nix --argstr inventory PATH [--arg plan false]
# gives { file, errors, counts, plan }: the inventory's problems as lib words them, and
# the plan when there are none (and it was asked for).
{ inventory, plan ? true }: (import ./default.nix).inspect (/. + inventory) plan
