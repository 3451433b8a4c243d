"""Channels: messaging platforms where people talk to an agent, as plugins."""

from noroshi.channels.base import Channel, ChannelError, Inbound, Polled, Received

__all__ = ["Channel", "ChannelError", "Inbound", "Polled", "Received"]
