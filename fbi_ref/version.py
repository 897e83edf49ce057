"""The version of fbi_ref (one place, read by the package, the command line and the reference files)."""
__version__ = "0.1.0"
