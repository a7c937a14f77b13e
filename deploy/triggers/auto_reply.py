"""Auto-reply: answer each incoming message once, from the number it was sent to.

    smsbus triggers add auto-reply --script deploy/triggers/auto_reply.py \
        --condition "direction = 'in' AND status = 'RECEIVED'"
"""

REPLY = "Thank you, we received your message and will answer soon."


def handle(message, api):
    api.send(message.from_address, REPLY, sender=message.to_address)
    api.log(f"auto-reply queued for message {message.id}")
