"""The web dashboard and REST API (FastAPI on uvicorn), served by the running bot or by `chatops web`."""
