"""The console: live status, dashboard and analyst REST (HTTP 8080)."""
