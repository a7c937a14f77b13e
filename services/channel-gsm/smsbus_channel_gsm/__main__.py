from smsbus_channel_gsm.channel_gsm import main

main()
