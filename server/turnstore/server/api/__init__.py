"""The edges: gRPC and HTTP.

Also what both edges share: request-body checks, read costs, connection
bounds and metrics.
"""
