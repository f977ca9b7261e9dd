"""Test helpers shared by the test suites: waiting on conditions, servers."""
