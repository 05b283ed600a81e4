"""Phone calls: Twilio Media Streams bridged onto the Realtime session (see docs/telephony.md)."""
