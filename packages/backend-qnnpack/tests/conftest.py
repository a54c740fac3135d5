"""Shared fixtures: quiet torch's FX / quantized-dtype deprecation warnings in this package's tests."""

import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_deprecations():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
