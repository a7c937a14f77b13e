from smsbus_webhooks.webhooks import main

main()
