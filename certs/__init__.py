"""The webhook's own TLS: a private CA and serving certificate, kept in a Kubernetes Secret."""

# Here rather than in bootstrap: the CLI shows it in --help, which must not load the
# Kubernetes client.
SECRET_NAME = "image-backup-tls"
