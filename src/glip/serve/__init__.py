"""``glip serve``: GLIP behind an HTTP API, with a web page to try prompts (extra ``glip[serve]``).

Built on FastAPI + uvicorn because both are widely used and actively maintained, asyncio-based (so
many waiting connections cost no threads while one worker thread runs the model), and light;
python-multipart is what Starlette parses image uploads with.

- :mod:`glip.serve.inputs`: what a request may carry, checked (image decoded from memory, prompt,
  threshold), each refusal a 4xx with a one-line reason.
- :mod:`glip.serve.batching`: requests with the same key arriving within a few ms share one call.
- :mod:`glip.serve.detector`: a batch of same-prompt, same-size images -> one forward pass.
- :mod:`glip.serve.app`: the routes (``POST /detect``, ``GET /health``, ``GET /``, the page in
  ``page.html``); :mod:`glip.serve.server`: running it with uvicorn.

This package imports FastAPI and torch; ``glip.cli_serve`` imports it only when the command runs.
"""

from glip.serve.app import ServeOptions, create_app
from glip.serve.server import BackgroundServer, bind_socket, run_server

__all__ = ["BackgroundServer", "ServeOptions", "bind_socket", "create_app", "run_server"]
