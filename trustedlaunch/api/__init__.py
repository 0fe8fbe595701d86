"""ARM-shaped REST API (FastAPI) over the control layer."""
