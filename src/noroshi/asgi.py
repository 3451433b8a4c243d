"""`noroshi.asgi:app` for uvicorn and other ASGI servers; configured like `noroshi serve`."""

from noroshi.app import App

app = App()
