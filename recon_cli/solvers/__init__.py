"""Solvers. Importing this package registers every solver module listed here."""
import importlib

_MODULES = ["fbp", "sirt", "cgls", "sgp_tv", "unet", "tv", "svtv", "tpv", "graphla", "tikhonov", "rising"]

for _m in _MODULES:
    try:
        importlib.import_module(f"recon_cli.solvers.{_m}")
    except ModuleNotFoundError as _exc:  # a module not written yet
        if _exc.name != f"recon_cli.solvers.{_m}":
            raise
