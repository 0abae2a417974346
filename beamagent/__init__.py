"""beamagent: the BEAM/OTP process model for LLM agents."""

__all__: list[str] = []
