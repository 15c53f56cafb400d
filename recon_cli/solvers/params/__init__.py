"""Solver declarations: each module declares one solver's parameter model, description and kind
(recon_cli.solvers.registry.declare) without numpy, so that validating a pipeline and ``recon
solvers`` import none of the solvers' numerical code. The solver modules one level up register the
``solve`` functions for the same models."""
