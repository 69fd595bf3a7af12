"""Build the optional compiled RAM record scanner; everything else is declared in pyproject.toml.

Without a C compiler the install still succeeds (``optional=True``) and the pure
Python scanner is used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "migstream.ram._scan",
            ["migstream/ram/_scan.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
