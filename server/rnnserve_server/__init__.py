"""rnnserve's server: ONNX Runtime sessions from a model repository, per-session recurrent state,
a session-aware batcher, and gRPC front ends (native API and KServe v2) over one service layer.

Layers (imports only point downwards; nothing below `grpc_api` imports grpc):
    grpc_api (servicers, protobuf conversion)  ->  service  ->  batcher, session store  ->  runtime
The server never imports torch, onnx or the training package.
"""

from rnnserve_server.compiled import activate

# Before any submodule is imported: run the mypyc-compiled hot path only if it matches its sources.
activate()
