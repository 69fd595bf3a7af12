"""migstream: read QEMU migration and savevm streams."""

__version__ = "0.1.0"
