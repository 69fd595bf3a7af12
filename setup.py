"""Build the optional compiled RAM record scanner; everything else is declared in pyproject.toml.

Without a C compiler the install still succeeds (``optional=True``) and the pure
Python scanner is used.  An editable install builds the module in place: run
``pip install -e .`` again after changing ``migstream/ram/_scan.c``.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "migstream.ram._scan",
            ["migstream/ram/_scan.c"],
            optional=True,
        )
    ]
)
