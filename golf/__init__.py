"""golf: a parameter-golf pipeline (train, quantise, compress, check the budget, evaluate, record)."""
