"""``krt-runner entrypoint``: the KRT's gRPC front door, as KRE v1's ``kre-entrypoint`` served it."""
