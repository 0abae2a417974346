"""Backend routing: pure policies (``policies``) and the registry that holds their state."""
