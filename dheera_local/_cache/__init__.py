"""The score cache: the folder store, its secret, the shared Redis/Valkey tier."""
