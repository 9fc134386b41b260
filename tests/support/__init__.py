"""Helpers shared by the test modules (imported as `support.<module>`: pytest puts tests/ on
sys.path), so no test module imports another."""
