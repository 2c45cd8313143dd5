"""Deploys: build every closure once, switch machines in the plan's order, check health,
roll back what fails. `engine.deploy` is the entry point; `cli` is the thin click layer."""
