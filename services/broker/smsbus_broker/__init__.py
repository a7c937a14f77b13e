"""smsbus notification broker."""
