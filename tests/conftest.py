"""pytest configuration for tests/: helpers live in support.py (imported by name by the tests)."""
import support  # noqa: F401  (silences coremltools' import-time messages once, before any test)
