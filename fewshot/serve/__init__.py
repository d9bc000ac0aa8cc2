"""``fewshot serve``: projects of classes and images in a folder, an HTTP API over them and a web page.

``store`` keeps the data (SQLite + files), ``uploads`` checks what clients send, ``engine`` runs the model,
``app`` is the FastAPI application, ``server`` starts it (the CLI's ``fewshot serve``). Needs the
``fewshot[serve]`` extra.
"""
