"""gRPC front end of the native API: servicers that convert messages (convert.py), call the
service layer and map its errors to gRPC statuses in one place (status.py)."""
