from smsbus_channel_smpp.channel_smpp import main

main()
