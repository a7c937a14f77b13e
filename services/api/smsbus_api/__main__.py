from smsbus_api.api import main

main()
