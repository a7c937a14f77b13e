from smsbus_router.router import main

main()
