"""derbus: the shared library of the derbus DER platform."""
