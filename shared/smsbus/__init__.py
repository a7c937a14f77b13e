"""smsbus: the shared library of the SMS gateway, and the local API for integrators.

    import smsbus
    smsbus.send("+31612345678", "hi")              # queue a message
    smsbus.find(status="FAILED", limit=10)          # browse the queue
    smsbus.notify_status_update([17, 18])           # wake the services after your own SQL
    smsbus.campaign("promo", start=True)             # start a stored campaign
    for n in smsbus.Listener(): print(n.topic, n.ids)   # be woken yourself
"""

from smsbus.bus import Listener, Notification, notify_non_status_update, notify_status_update
from smsbus.errors import (
    ConfigError,
    ForbiddenMove,
    InvalidMessage,
    MalformedNotification,
    MessageNotFound,
    SmsbusError,
)
from smsbus.local_api import campaign, find, get, send
from smsbus.message import Message

__all__ = [
    "ConfigError",
    "ForbiddenMove",
    "InvalidMessage",
    "Listener",
    "MalformedNotification",
    "Message",
    "MessageNotFound",
    "Notification",
    "SmsbusError",
    "campaign",
    "find",
    "get",
    "notify_non_status_update",
    "notify_status_update",
    "send",
]
