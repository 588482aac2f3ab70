"""The control plane: a JSON API over a unix socket, its client, and the state file."""
