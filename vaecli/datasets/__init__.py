"""Dataset loaders and the bundled data (vaecli.datasets).

Lives inside the vaecli package so that no top-level ``datasets`` module is
installed beside the well-known package of that name.
"""
