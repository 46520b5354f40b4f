"""Example degradation plugins (see README, "Your own data"): functions `uint8 HxWx3 -> uint8 HxWx3`."""
