"""Calibration: simulated quantization ranges, the JAQ objective and the Q-Sched coefficient search.

Entry point: `calibration.api.calibrate(CalibrationConfig(...)) -> QSchedFile`.
"""
