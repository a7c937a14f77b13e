from smsbus_triggers.triggers import main

main()
