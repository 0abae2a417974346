"""Backends: wire codecs, transports and one handler per backend."""
