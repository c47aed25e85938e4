"""One small error hierarchy: callers catch `IpaError`, users read the message."""


class IpaError(Exception):
    """Base of every error the user should see as a message, not a traceback."""


class ConfigError(IpaError):
    """A pipeline spec, experiment config or option is wrong; the message names the field."""


class ProfileError(IpaError):
    """A profile table is malformed; the message names the file and row."""


class TraceNotFoundError(IpaError):
    """No Twitter trace in any of the places we look."""


class MeterUnavailable(IpaError):
    """An energy meter cannot run here; `reason` tells the user why (absent, no permission)."""

    def __init__(self, meter: str, reason: str):
        super().__init__(f"{meter}: {reason}")
        self.meter = meter
        self.reason = reason


class MeterPermissionError(MeterUnavailable):
    """The counters exist but this user may not read them (RAPL is root-only on recent kernels)."""
