"""Command-line interface (Click). One module per command; ``main.py`` assembles the group."""
