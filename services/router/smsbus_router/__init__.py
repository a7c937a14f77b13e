"""smsbus router."""
