"""Throwaway plugins used by the tests (registered per test, never installed)."""
