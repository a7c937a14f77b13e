"""Forward each incoming message to a webhook: an HTTP POST of JSON, retried with backoff.

The URL comes from the environment of the triggers service (supervisord's `environment=`),
SMSBUS_WEBHOOK_URL. Keep the attempts within the trigger's timeout; when they all fail the
message ends trigger_status FAILED with the reason, and `smsbus messages reprocess ID`
tries again later.

    smsbus triggers add webhook --script deploy/triggers/webhook_forward.py --timeout 10 \
        --condition "direction = 'in' AND status = 'RECEIVED'"
"""

import json
import os
import time
import urllib.error
import urllib.request

URL = os.environ.get("SMSBUS_WEBHOOK_URL", "http://127.0.0.1:8080/sms")
ATTEMPTS = 3
REQUEST_TIMEOUT_S = 2.0
FIRST_BACKOFF_S = 0.2


def handle(message, api):
    payload = json.dumps(
        {
            "id": message.id,
            "from": message.from_address,
            "to": message.to_address,
            "body": message.body,
            "received_at": message.received_at.isoformat() if message.received_at else None,
            "channel": message.channel,
        }
    ).encode()
    problem = None
    for attempt in range(1, ATTEMPTS + 1):
        request = urllib.request.Request(
            URL, data=payload, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                api.log(f"forwarded message {message.id} status={response.status} attempt={attempt}")
                return
        except urllib.error.HTTPError as e:
            problem = f"HTTP {e.code}"
            if e.code < 500 and e.code != 429:
                break  # the webhook refuses it: trying again will not help
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            problem = str(getattr(e, "reason", e))
        if attempt < ATTEMPTS:
            time.sleep(FIRST_BACKOFF_S * 2 ** (attempt - 1))
    raise RuntimeError(f"webhook {URL} failed after {attempt} attempt(s): {problem}")
