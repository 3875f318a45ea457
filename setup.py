"""Build the optional native core of gmpworker (``gmpworker._core``, from C source).

The project's metadata lives in pyproject.toml; this file only adds the C
extension. ``optional=True``: on a machine without a C compiler or the Python
headers the build of the extension fails quietly and the pure-Python runtime is
installed alone (``gmpworker.native.NATIVE`` is then False).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gmpworker._core",
            sources=["gmpworker/_core.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
