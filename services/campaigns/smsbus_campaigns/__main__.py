from smsbus_campaigns.campaigns import main

main()
