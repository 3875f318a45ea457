"""The front API: FastAPI app factory (``main``), dependencies, routers, errors, schemas."""
