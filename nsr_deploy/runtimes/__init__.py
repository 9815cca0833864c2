"""Engines behind one interface, host-side tiling and image I/O. Imports no torch."""
