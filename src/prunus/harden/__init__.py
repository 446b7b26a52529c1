"""After the method: weights held in their sets (MaskKeeper, QuantKeeper), BatchNorm recalibration, statistics."""
