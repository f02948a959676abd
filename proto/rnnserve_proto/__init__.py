"""Wire contracts of rnnserve, generated from the .proto files beside this module at build time.

- ``model_repository_pb2``: the metadata file written by the training module next to every
  ``model.onnx`` and read by the server (the only thing the two share).
- ``rnnserve_pb2`` / ``rnnserve_pb2_grpc``: the native streaming inference API.
"""
