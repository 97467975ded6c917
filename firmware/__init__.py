"""Host side of the accelerator: graph IR, compiler, devices, driver, reports (docs/firmware.md)."""
