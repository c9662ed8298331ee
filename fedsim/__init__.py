"""fedsim: a federated-learning simulator for FedPara models on Ray and Lightning."""

__version__ = "0.1.0"
