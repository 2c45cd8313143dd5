{
  description = "Homestack: a declarative private cloud at home";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    microvm = {
      url = "github:microvm-nix/microvm.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    sops-nix = {
      url = "github:Mic92/sops-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    disko = {
      url = "github:nix-community/disko";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      microvm,
      sops-nix,
      disko,
    }:
    let
      # The plan library uses builtins only and the `lib` output is this import alone, so
      # `nix eval --offline .#lib.plan` works on a machine that cannot fetch nixpkgs.
      homestackLib = import ./lib;
      inherit (homestackLib) plan;

      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      inherit (nixpkgs) lib;

      modules = import ./modules;
      machinesOf =
        plan: configurations:
        import ./modules/machines.nix {
          inherit lib plan configurations;
          homestackModules = modules;
          inputs = {
            inherit
              nixpkgs
              microvm
              sops-nix
              disko
              ;
          };
          root = ./.;
          revision = self.rev or null;
          tools = self.packages.${system}.tools;
        };
      machines = machinesOf plan self.nixosConfigurations;

      # The NixOS VM tests run on the frozen example (tests/example/), whose machines own
      # the test keys and fixtures: a fork's own inventory.toml leaves them as they are.
      examplePlan = homestackLib.mkPlan ./tests/example/inventory.toml;
      exampleMachines = machinesOf examplePlan exampleMachines.nixosConfigurations;

      vmTests = import ./tests/nixos {
        inherit pkgs;
        plan = examplePlan;
        homestackModules = modules;
        inherit sops-nix microvm;
        configurations = exampleMachines.nixosConfigurations;
        self = ./.;
      };
      nestedVmTests = import ./tests/nixos/nested.nix;
      # The alternatives (Traefik, Headscale), each on the example switched to it.
      alternativeVmTests = import ./tests/nixos/alternatives.nix {
        inherit pkgs sops-nix homestackLib;
        homestackModules = modules;
        self = ./.;
      };

      # The `tools` command with the programs it drives on its PATH.
      tools = pkgs.python3Packages.buildPythonApplication {
        pname = "homestack-tools";
        version = "0.1.0";
        pyproject = true;
        src = ./tools;
        build-system = [ pkgs.python3Packages.setuptools ];
        dependencies = with pkgs.python3Packages; [
          click
          tomli-w
          cryptography
          pyyaml
        ];
        makeWrapperArgs = [
          # deploy runs `tools secrets check` and `tools certs check` by name.
          "--prefix PATH : ${placeholder "out"}/bin"
          "--prefix PATH : ${
            lib.makeBinPath [
              pkgs.sops
              pkgs.age
              pkgs.ssh-to-age
              pkgs.openssh
              pkgs.nixos-rebuild
              pkgs.nixos-anywhere
              pkgs.nix
            ]
          }"
          # The plan library, for inventories outside a Homestack checkout.
          "--set-default HOMESTACK_LIB ${./lib}"
        ];
        pythonImportsCheck = [ "homestack.cli" ];
        meta.mainProgram = "tools";
      };
    in
    {
      lib = homestackLib;

      nixosModules = modules // {
        default = modules.plan;
      };

      # One system per machine of the inventory: every host (`homelab`, `cloud-relay`) and
      # every guest (`auth`, `vpn`, `proxy`, `db`); the hypervisor runs the guests' systems.
      nixosConfigurations = machines.nixosConfigurations;

      # The example disk layouts (hosts/<name>/disko.nix), for installing with disko.
      inherit (machines) diskoConfigurations;

      packages.${system} = {
        inherit tools;
        default = tools;
      };

      legacyPackages.${system} = {
        # Guests on an engine = "incus" hypervisor as Incus images, one directory each
        # (`nix build .#incusImages.<guest>`, docs/incus.md). Not under `packages`, whose
        # names `nix eval --offline .#lib…` must read without nixpkgs.
        incusImages = import ./modules/incus-images.nix {
          inherit lib pkgs nixpkgs plan;
          configurations = self.nixosConfigurations;
        };
        # VM tests that boot MicroVMs inside the test VM and so need nested virtualisation:
        # not in `checks` (`nix flake check` on an ordinary builder); `tools test NAME`.
        nestedChecks = lib.getAttrs nestedVmTests vmTests;

        # What `tools provision` hands to nixos-anywhere (--store-paths): each host with a
        # disko layout, its partitioning script and its system. disko's module is added
        # only here, with enableConfig off: the system keeps the file systems its hardware
        # file declares, exactly as `nixos-rebuild --flake .#<host>` builds it.
        install = lib.mapAttrs (
        name: layout:
        let
          installer = self.nixosConfigurations.${name}.extendModules {
            modules = [
              disko.nixosModules.disko
              layout
              { disko.enableConfig = false; }
            ];
          };
        in
        {
          inherit (installer.config.system.build) diskoScript;
          inherit (self.nixosConfigurations.${name}.config.system.build) toplevel;
        }
      ) machines.diskoConfigurations;
      };

      apps.${system}.deploy = {
        type = "app";
        program = "${pkgs.writeShellScript "homestack-deploy" ''
          exec ${tools}/bin/tools deploy "$@"
        ''}";
        meta.description = "Validate, build and switch every machine of the inventory";
      };

      devShells.${system}.default = pkgs.mkShell {
        packages = [
          (pkgs.python3.withPackages (ps: [
            ps.click
            ps.tomli-w
            ps.cryptography
            ps.pyyaml
            ps.pytest
            ps.hypothesis
            ps.mypy
          ]))
          pkgs.ruff
          pkgs.sops
          pkgs.age
          pkgs.ssh-to-age
          pkgs.nixos-rebuild
          pkgs.nixfmt
          tools
        ];
      };

      formatter.${system} = pkgs.nixfmt;

      # The NixOS VM tests (tests/nixos) that an ordinary KVM builder runs, and the plan of
      # the example inventory, validated and with every artifact rendered.
      checks.${system} = removeAttrs vmTests nestedVmTests // alternativeVmTests // {
        plan = pkgs.writeText "homestack-plan.json" (builtins.toJSON plan);
      };
    };
}
