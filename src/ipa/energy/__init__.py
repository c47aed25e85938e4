"""Energy meters: one interface (`EnergyMeter`), one module per backend, auto-detection."""

from ipa.energy.common import EnergyMeter, Measurement, Reading
from ipa.energy.detect import METERS, Detection, open_meter

__all__ = ["METERS", "Detection", "EnergyMeter", "Measurement", "Reading", "open_meter"]
