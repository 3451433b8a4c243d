"""`noroshi.asgi:app` for uvicorn and other ASGI servers; configured like `noroshi serve`, and
the process set up for serving in the same way (`noroshi.process`)."""

from noroshi.app import App
from noroshi.process import tune_collector

tune_collector()
app = App()
