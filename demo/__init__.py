"""The Gradio web UI: multi-turn image chat, side-by-side comparison, an example gallery, conversation logs.

It talks to `serve/` only over HTTP (controller for addresses, workers for answers) and shares nothing with it
but the wire schemas in `serve/protocol.py`. Start it with `python -m demo.gradio_web_server`.
"""
