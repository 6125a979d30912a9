# The cffi extension (sysemu._sysemu) is built in API mode at install time.
from setuptools import setup

setup(cffi_modules=["sysemu/_build.py:ffibuilder"])
