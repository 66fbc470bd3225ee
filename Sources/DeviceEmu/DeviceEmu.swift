// DeviceEmu: the fake GPU and its dmem driver.
