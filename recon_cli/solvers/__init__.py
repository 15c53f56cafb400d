"""Solvers. Each module registers one solver with recon_cli.solvers.registry, which lists them all
(``SOLVER_MODULES``) and imports a module only when its solver is asked for."""
