from smsbus_archiver.archiver import main

main()
