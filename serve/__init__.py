"""Serving processes: controller, model workers, launcher, client; wire schemas in `serve.protocol`."""
