"""The webhook's own TLS: a private CA and serving certificate, kept in a Kubernetes Secret."""
