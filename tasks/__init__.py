"""graphpipe's stages: plain typed functions, callable and testable without a Prefect API.

Prefect tasks wrapping them live in :mod:`flows`.
"""
