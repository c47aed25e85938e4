"""ipa: energy-aware inference pipeline adaptation.

The small public surface: `ipa.optimize` (problem, policies, solvers), `ipa.profiles`
(profile tables, profiler), `ipa.experiment` (runner, report). Everything else is machinery.
"""

__version__ = "0.1.0"
