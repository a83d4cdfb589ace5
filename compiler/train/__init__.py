"""Training for dLAC: fake-quantized modules that compute what dlac compiles (``qat``),
WRPN widening (``widen``), data (``data``) and the training loop (``loop``)."""
