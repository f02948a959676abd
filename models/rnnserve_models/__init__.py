"""rnnserve's training module: recurrent variants in PyTorch, trained with truncated BPTT and
exported to ONNX (state as explicit inputs/outputs) into a Triton-style model repository.

Import direction: this package imports neither the server nor the client.
"""
