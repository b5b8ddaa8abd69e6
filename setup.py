# All metadata is in setup.cfg; Debian's pybuild still calls setup.py.
from setuptools import setup

setup()
