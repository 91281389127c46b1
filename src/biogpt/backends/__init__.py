"""Hardware back-ends: inference forms of a model for a device (today: the CPU's bf16 and int8 forms)."""
