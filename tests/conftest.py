pytest_plugins = ["fixtures_emulator"]
