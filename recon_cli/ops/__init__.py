"""Linear operators that are not projectors: finite differences, graph Laplacians, proximal maps."""
