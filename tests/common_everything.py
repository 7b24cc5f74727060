"""Imports every module of ``licensing_common`` (for tests/test_import_closure.py)."""

import importlib
import pkgutil

import licensing_common

for _module in pkgutil.walk_packages(licensing_common.__path__, "licensing_common."):
    importlib.import_module(_module.name)
