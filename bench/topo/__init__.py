"""Topology tools: the emulated cluster (namespaces, launch, probe) and the cost model (profiles, prediction,
calibration fits, the field's numbers)."""
