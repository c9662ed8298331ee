"""FedPara layers, models and the Lightning classifier: plain torch, no fedsim."""
