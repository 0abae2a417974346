"""Small fake CLIs (python scripts) for protocol-level fault tests."""
