from smsbus_broker.broker import main

main()
