"""Real peers for the tests, run as separate processes: services, simulators, emulators."""
