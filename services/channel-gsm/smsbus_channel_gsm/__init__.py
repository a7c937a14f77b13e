"""smsbus GSM modem channel and modem emulator."""
