"""The closed loop: the autopilot that retrains on evidence, and its replay through real months."""
