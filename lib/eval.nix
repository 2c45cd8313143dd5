# Entry point for tools: nix-instantiate --eval --strict --json lib/eval.nix --argstr inventory PATH
{ inventory }: (import ./default.nix).mkPlan (/. + inventory)
