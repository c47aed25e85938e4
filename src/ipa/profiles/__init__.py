"""Profiles: measured latency, throughput and energy of every variant at every (batch, cores)."""

from ipa.profiles.table import Profile, ProfileTable, load_profiles

__all__ = ["Profile", "ProfileTable", "load_profiles"]
