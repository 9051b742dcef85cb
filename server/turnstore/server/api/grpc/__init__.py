"""The gRPC edge: one servicer per service, interceptors, ingress limits."""
